"""Training callbacks: transfer stages, the NaN guard, the run recorder and the step log."""

import contextlib
import csv
import io
import math
import sys
import time
from pathlib import Path

import keras

from tfresnet import keras_fixes
from tfresnet.evaluation.pictures import curves_figure
from tfresnet.optim.optimizers import current_learning_rate
from tfresnet.runs.files import atomic_save_figure, atomic_write_text
from tfresnet.runs.run_folder import RunFolder
from tfresnet.training.checkpoint import BackgroundSaver

HISTORY_FIELDS = ("epoch", "lr", "loss", "ce", "l2", "accuracy", "top5", "val_loss", "val_ce",
                  "val_l2", "val_accuracy", "val_top5", "seconds")


class NanGuard(keras.callbacks.TerminateOnNaN):
    """Keras' `TerminateOnNaN` (stop at the first NaN or infinite loss), which also keeps
    the epoch it stopped in: the run recorder must not save that epoch, and the error
    message names it."""

    def __init__(self):
        super().__init__()
        self.bad_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and self.bad_epoch is None:
            self.bad_epoch = self.epoch + 1


class TransferStages(keras.callbacks.Callback):
    """Sets the pretrained backbone's training mode at each epoch, as the
    `TransferSettings` say: two-stage trains only the head (backbone fixed, BN in inference
    mode) for ``head_epochs``, then everything with the backbone's updates scaled by
    ``backbone_lr``; finetune scales them from the start."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def on_epoch_begin(self, epoch, logs=None):
        two_stage = self.settings.transfer.trains_head_first
        head_only = two_stage and epoch < self.settings.head_epochs
        multiplier = 0.0 if head_only else self.settings.backbone_lr
        if self.model.backbone_lr != multiplier:
            self.model.set_backbone_lr(multiplier)
            self.model.make_train_function(force=True)
            if two_stage and epoch == self.settings.head_epochs:
                print(f"epoch {epoch + 1}: unfreezing the backbone (LR x {multiplier})")


def training_callbacks(settings, ema):
    """The callbacks every run trains with: the transfer stages (when the `TransferSettings`
    fine-tune), batch norm's statistics averaged over replicas (a no-op on one device), the
    NaN guard and, with an ``ema`` (``--ema``), Keras' swap to the averaged weights for
    validation."""
    stages = [TransferStages(settings)] if settings.transfer.scales_backbone else []
    ema = [keras.callbacks.SwapEMAWeights()] if ema else []
    return [*stages, keras_fixes.AverageBatchNormAcrossReplicas(), NanGuard(), *ema]


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: best.keras (on a new best validation accuracy), history.csv,
    curves.png (at most every `CURVES_SECONDS`, and at the end), then last.keras -- all
    written atomically, the two models in the background while the next epoch trains
    (`tfresnet.training.checkpoint.BackgroundSaver`) -- and a one-line summary with the
    run's ETA. Epochs with a non-finite loss are never recorded.

    best.keras is the deployable model: weights and the model's own state, no optimizer
    (half the size). last.keras also holds the optimizer: what resuming needs.

    Args:
        run_dir: the run folder.
        epochs: total epochs of the run.
        rows: history rows of the epochs already done (when resuming).
        has_validation: without a validation split the last epoch is the best.
        guard: the `NanGuard`, whose verdict suppresses saving.
        title: title of the curves plot.
        ema: Keras' `SwapEMAWeights` callback of a run with ``--ema``: best.keras gets the
            averaged weights (last.keras keeps the trained ones and the average's state).
        checkpoint_every: ``(steps, seconds)`` of ``--checkpoint-every``: inside epochs,
            resume.keras (last.keras's contents) every so many steps or seconds, at the end
            of an execution; removed when training ends.
        before_save: called before a save inside an epoch (batch norm's statistics
            averaged over replicas), or None.
    """

    CURVES_SECONDS = 10.0

    def __init__(self, run_dir, epochs, rows, has_validation, guard, title, ema=None,
                 checkpoint_every=(None, None), before_save=None):
        super().__init__()
        self.before_save = before_save
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.rows = list(rows)
        self.has_validation = has_validation
        self.guard = guard
        self.title = title
        self.ema = ema
        self.best = max((r.get("val_accuracy", -1.0) for r in self.rows), default=-1.0)
        self.train_seconds = 0.0
        self.trained_epochs = 0
        self._saver = None
        self.checkpoint_every = checkpoint_every
        self._saved_at = (time.monotonic(), 0)  # the last save's time, and step of the epoch
        self._curves_at = (-math.inf, 0)  # when they were drawn, and with how many rows

    def on_train_begin(self, logs=None):
        # Built now, while the optimizer's variables are those the model was built with.
        self._saver = self._saver or BackgroundSaver(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.validation_seconds = 0.0

    def on_train_batch_end(self, batch, logs=None):
        steps, seconds = self.checkpoint_every
        done = batch + 1  # steps of this epoch done (the last of an execution of several)
        if (steps is None and seconds is None) or done >= self.params.get("steps", done + 1):
            return  # the epoch's end saves anyway
        since, at = self._saved_at
        if (steps and done - at >= steps) or (seconds and time.monotonic() - since >= seconds):
            if self.before_save:
                self.before_save()
            self._saver.save(self.run_dir / RunFolder.RESUME, optimizer=True)
            self._saved_at = (time.monotonic(), done)

    def on_test_begin(self, logs=None):
        self.validation_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds += time.perf_counter() - self.validation_start

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self.epoch_start
        self.train_seconds += seconds - self.validation_seconds
        self.trained_epochs += 1
        logs["lr"] = current_learning_rate(self.model.optimizer)
        if self.guard.bad_epoch or not all(math.isfinite(float(v)) for v in logs.values()):
            return
        row = {"epoch": epoch + 1, "lr": logs["lr"], "seconds": round(seconds, 3)}
        row.update({k: float(v) for k, v in logs.items() if k in HISTORY_FIELDS and k != "lr"})
        self.rows.append(row)
        self._save(row)
        self._saved_at = (time.monotonic(), 0)
        self._print_summary(row)

    def on_train_end(self, logs=None):
        if self.rows and self._curves_at[1] != len(self.rows):
            self._draw_curves()
        self._saver.wait()
        (self.run_dir / RunFolder.RESUME).unlink(missing_ok=True)  # last.keras is newer

    def _save(self, row):
        improved = row.get("val_accuracy", -1.0) > self.best
        if improved:
            self.best = row["val_accuracy"]
        # Without validation there is nothing to select on: the last epoch is the best.
        if improved or not self.has_validation:
            self._save_best()
        atomic_write_text(self.run_dir / RunFolder.HISTORY, self._history_csv())
        if time.monotonic() - self._curves_at[0] >= self.CURVES_SECONDS:
            self._draw_curves()
        self._save_last()

    def _save_best(self):
        """best.keras: the model (EMA's averaged weights with ``--ema``) without the
        optimizer."""
        with self._averaged_weights():
            self._saver.save(self.run_dir / RunFolder.BEST, optimizer=False)

    def _save_last(self):
        self._saver.save(self.run_dir / RunFolder.LAST, optimizer=True)

    def _draw_curves(self):
        atomic_save_figure(curves_figure(self.rows, self.title), self.run_dir / RunFolder.CURVES)
        self._curves_at = (time.monotonic(), len(self.rows))

    @contextlib.contextmanager
    def _averaged_weights(self):
        """The model holds the EMA weights inside (the swap validation uses too)."""
        if self.ema is None:
            yield
            return
        self.ema.on_test_begin()
        try:
            yield
        finally:
            self.ema.on_test_end()

    def _history_csv(self):
        out = io.StringIO()
        writer = csv.DictWriter(out, HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def _print_summary(self, row):
        done = row["epoch"]
        recent = [r["seconds"] for r in self.rows[-5:]]
        eta = sum(recent) / len(recent) * (self.epochs - done)
        parts = [f"epoch {done}/{self.epochs}", f"loss {row.get('loss', math.nan):.4f}",
                 f"acc {row.get('accuracy', math.nan):.4f}"]
        if "val_accuracy" in row:
            parts.append(f"val_acc {row['val_accuracy']:.4f} (best {self.best:.4f})")
        parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.1f}s",
                  f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"]
        print("  ".join(parts), file=sys.stdout, flush=True)


def interactive():
    """Whether output goes to a terminal or a notebook kernel, where Keras' progress bar
    renders (elsewhere it would print nothing until an epoch ends)."""
    return sys.stdout.isatty() or "ipykernel" in sys.modules


class StepLog(keras.callbacks.Callback):
    """A line every ``every`` training steps, for logs without a progress bar (``nohup``,
    pipes, ``!python`` in a notebook): epoch and step, loss, accuracy, learning rate,
    images/s since the last line and the epoch's ETA.

    Args:
        every: steps between lines.
        steps: steps per epoch.
        batch_size: global batch size (for images/s).
    """

    def __init__(self, every, steps, batch_size):
        super().__init__()
        self.every = every
        self.steps = steps
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = self.last_time = time.perf_counter()
        self.last_step = 0

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1  # steps done this epoch (the last of an execution of several)
        if step // self.every == self.last_step // self.every or step >= self.steps:
            return
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        eta = (now - self.epoch_start) / step * (self.steps - step)
        logs = logs or {}
        print(f"epoch {self.epoch + 1} step {step}/{self.steps}  "
              f"loss {float(logs.get('loss', math.nan)):.4f}  "
              f"acc {float(logs.get('accuracy', math.nan)):.4f}  "
              f"lr {current_learning_rate(self.model.optimizer):.3g}  {rate:,.1f} img/s  "
              f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)
        self.last_step, self.last_time = step, now
