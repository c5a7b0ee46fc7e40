"""The LR range test: one short run with the learning rate growing exponentially per step.

The suggestion is where the smoothed loss falls fastest, before it diverges.
"""

import dataclasses
import io
import math

import keras
import numpy as np

from tfresnet.errors import UserError
from tfresnet.runs.files import atomic_write_text
from tfresnet.training.build import build_model
from tfresnet.training.pipelines import make_pipelines
from tfresnet.training.plan import build_settings
from tfresnet.tuning.results import plot_search


def lr_range_test(base, data, runtime, plan, lr_range, steps, out_dir):
    """Trains ``steps`` batches of the run ``base`` describes, with the LR growing from
    ``lr_range[0]`` to ``[1]``; writes ``lr_range.csv`` and ``lr_range.png`` and returns the
    suggested LR (steepest fall of the smoothed loss before divergence).

    Each recorded point is one optimizer update: its loss, and the LR that update applied
    (the schedule at the optimizer's step count before it). The test runs one step per
    execution whatever ``base`` says, so every update is seen; the rest of the run (model,
    precision, XLA, augmentation in the step) is as ``base`` would train.
    """
    if base.grad_accum > 1:
        raise UserError("the LR range test records one LR per batch; drop --grad-accum for "
                        "it (the LR it finds holds per update)")
    if base.steps_per_execution > 1:
        print(f"note: the LR range test runs one step per execution (not "
              f"{base.steps_per_execution}) to record every update")
    plan = dataclasses.replace(plan, steps_per_execution=1)
    low, high = lr_range
    schedule = keras.optimizers.schedules.ExponentialDecay(low, max(1, steps - 1), high / low)
    model = build_model(data, runtime, plan, **build_settings(base))
    model.optimizer.learning_rate = schedule
    train_data, _ = make_pipelines(base.augment, data, runtime, plan)
    record = []  # (update, applied LR, loss)

    class Recorder(keras.callbacks.Callback):
        # One step per "epoch", so the logged loss is that batch's alone.
        def on_epoch_end(self, epoch, logs=None):
            update = int(self.model.optimizer.iterations.numpy())
            record.append((update, float(schedule(update - 1)), float(logs["loss"])))
            smoothed = smooth([loss for _, _, loss in record])
            if not math.isfinite(record[-1][2]) or smoothed[-1] > 4 * min(smoothed):
                self.model.stop_training = True

    model.fit(train_data, steps_per_epoch=1, epochs=steps, callbacks=[Recorder()],
              shuffle=False, verbose=0)
    rates = np.array([lr for _, lr, _ in record])
    smoothed = np.array(smooth([loss for _, _, loss in record]))
    out = io.StringIO()
    out.write("update,lr,loss,smoothed_loss\n")
    for (update, lr, loss), average in zip(record, smoothed):
        out.write(f"{update},{lr:.6g},{loss:.6g},{average:.6g}\n")
    atomic_write_text(out_dir / "lr_range.csv", out.getvalue())
    finite = np.isfinite(smoothed)
    rates, smoothed = rates[finite], smoothed[finite]
    suggestion = steepest_descent(rates, smoothed)
    plot_search(out_dir / "lr_range.png", "learning rate", "smoothed training loss", rates,
                smoothed, marker=(suggestion, smoothed[int(np.argmin(np.abs(rates - suggestion)))]),
                title=f"LR range test: {base.model} on {base.dataset}, {len(record)} steps",
                line=True)
    return suggestion


def steepest_descent(rates, losses):
    """The largest rate that still falls at least 80 % as fast as the steepest point of the
    loss curve, before its minimum.

    Slopes are per log-step of the rate, over a window of ``n/15`` steps, and the first
    tenth of the sweep is ignored, so the noise of the first steps cannot win. Along a
    long, evenly steep stretch the top of it is taken, not a noisy point near its start.
    """
    lowest = int(np.argmin(losses))
    start = len(losses) // 10
    window = max(2, len(losses) // 15)
    if lowest - start < 2 * window:
        raise UserError("the loss never fell steadily; widen the range (lower --lr-min) or "
                        "use more --range-steps")
    log_rates = np.log(rates)
    centres = np.arange(start + window, lowest - window + 1)
    slopes = ((losses[centres + window] - losses[centres - window])
              / (log_rates[centres + window] - log_rates[centres - window]))
    steep = centres[slopes <= 0.8 * slopes.min()]
    return float(rates[steep.max()])


def smooth(values, beta=0.98):
    """Bias-corrected exponential moving average."""
    average, out = 0.0, []
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return out
