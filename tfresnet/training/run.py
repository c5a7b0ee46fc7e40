"""One training run, start to finish: folder, assembly, `model.fit`, test, ``summary.json``.

The run folder is resumed or refused before anything is assembled; the test evaluation and
``summary.json`` close the run.
"""

import tempfile
import time
from pathlib import Path

import keras

from tfresnet import keras_fixes
from tfresnet.config import TrainConfig, checkpoint_interval
from tfresnet.errors import UserError
from tfresnet.evaluation.inference import test_metrics
from tfresnet.evaluation.pictures import draw_run
from tfresnet.runs.run_folder import RunFolder, load_model
from tfresnet.runtime.cluster import cluster_faults
from tfresnet.runtime.provenance import versions
from tfresnet.runtime.session import configure
from tfresnet.training.build import build_model
from tfresnet.training.callbacks import (
    NanGuard,
    RunRecorder,
    StepLog,
    interactive,
    training_callbacks,
)
from tfresnet.training.pipelines import make_pipelines
from tfresnet.training.plan import build_settings, describe_run, few_updates_note, prepare_run


def _restore(model, run_dir, updates_per_epoch):
    """Loads weights and optimizer state from the newest of the run folder's resume points;
    returns ``(finished epochs, steps done of the next)``."""
    found = {}
    for path in run_dir.resume_points():
        _load_state(model, path)
        found[path] = int(model.optimizer.iterations.numpy())
    newest = max(found, key=found.get)
    if newest != list(found)[-1]:  # the state loaded last is not the newest
        _load_state(model, newest)
    return divmod(found[newest], updates_per_epoch)


def _load_state(model, path):
    try:
        model.load_weights(path)
    except Exception as err:
        raise UserError(f"{path} cannot be resumed from ({type(err).__name__}); rerun with "
                        "--fresh to start over")


def make_callbacks(config, run_dir, rows, data, plan, chief=True):
    """The run's training callbacks (`training_callbacks`), then the run folder's: the
    recorder and TensorBoard (into ``run_dir``: a scratch folder on workers other than
    the chief, which must write the same checkpoints in step with it), and on the chief,
    outside a terminal or notebook, the step log."""
    callbacks = training_callbacks(config.transfer_settings, config.ema)
    guard = next(c for c in callbacks if isinstance(c, NanGuard))
    ema = next((c for c in callbacks if isinstance(c, keras.callbacks.SwapEMAWeights)), None)
    every = checkpoint_interval(config.checkpoint_every) if config.checkpoint_every else (
        None, None)
    # Averaging batch norm over replicas is collective: every worker must save at the same
    # step, which a duration does not promise on several workers.
    average = next(c for c in callbacks
                   if isinstance(c, keras_fixes.AverageBatchNormAcrossReplicas)).average
    callbacks.append(RunRecorder(run_dir, config.epochs, rows,
                                 has_validation=len(data.x_val) > 0, guard=guard,
                                 title=f"{config.model} on {config.dataset}", ema=ema,
                                 checkpoint_every=every,
                                 before_save=average if plan.workers == 1 or every[0] else None))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"),
                                                     profile_batch=0))
    if chief and config.log_every and not interactive():
        callbacks.append(StepLog(config.log_every, plan.steps_per_epoch, plan.batch_size))
    return callbacks


def train(config: TrainConfig, fresh=False):
    """Runs (or resumes) one training run; returns its summary dict (empty on workers
    other than the chief).

    Every input is checked -- settings, run folder, data set, model, weights file --
    before the first file is written, so a refused command leaves nothing behind.
    Under a multi-worker strategy every worker runs this; only the chief writes the run
    folder, the others write in step into a scratch folder that is removed at the end.
    """
    config.validate()
    run_dir = RunFolder.for_config(config)
    resuming = run_dir.check(config, fresh)
    runtime = configure(config.runtime_settings, config.model, config.width)
    runtime.agree({k: v for k, v in config.to_dict().items() if k != "output_dir"},
                  "the workers were started with different settings; start every worker "
                  "with the same command and flags")
    data, plan = prepare_run(config, runtime)
    if runtime.chief:
        print(data.describe())
    model = build_model(data, runtime, plan, **build_settings(config), pretrained=not resuming)
    if runtime.chief:
        print(describe_run(config, plan))
        note = few_updates_note(config, data, plan)
        if note:
            print(note)
    start = _restore(model, run_dir, plan.updates_per_epoch) if resuming else (0, 0)
    start_epoch = start[0]
    runtime.agree(list(start), "the workers found different checkpoints in "
                  f"{run_dir}; the run folder must be one shared folder that every worker "
                  "reads (pass the same --output-dir on a shared file system)")
    if not runtime.chief:
        with tempfile.TemporaryDirectory(prefix="tfresnet-worker-") as scratch:
            _fit(config, model, Path(scratch), data, runtime, plan, start, [])
        runtime.barrier()
        return {}
    run_dir.create(config, data.class_names, fresh)
    rows = [r for r in run_dir.history() if r["epoch"] <= start_epoch]
    if start_epoch >= config.epochs:
        print(f"{run_dir}: all {config.epochs} epochs already done")
    elif start[1]:
        print(f"resuming {run_dir} at step {start[1]} of epoch {start_epoch + 1}")
    elif resuming:
        print(f"resuming {run_dir} after epoch {start_epoch}")
    began = time.perf_counter()
    recorder = _fit(config, model, run_dir, data, runtime, plan, start, rows)
    summary = summarize(config, run_dir, data, plan, recorder,
                        wall_seconds=time.perf_counter() - began)
    if config.visualize and data.x_test is not None:
        draw_run(run_dir)
    runtime.barrier()
    return summary


def _fit(config, model, run_dir, data, runtime, plan, start, rows):
    """Trains from ``start`` (epoch, step) to the end, recording into ``run_dir``; returns
    the recorder. A run resumed inside an epoch first finishes that epoch in a ``fit`` of
    its remaining steps (whose training averages cover only those), then trains the rest."""
    start_epoch, start_step = start
    callbacks = make_callbacks(config, run_dir, rows, data, plan, runtime.chief)
    guard = next(c for c in callbacks if isinstance(c, NanGuard))
    recorder = next(c for c in callbacks if isinstance(c, RunRecorder))
    phases = [(start_epoch, start_step, start_epoch + 1)] if start_step else []
    phases.append((start_epoch + bool(start_step), 0, config.epochs))
    for first, step, end in phases:
        if first >= end or guard.bad_epoch:
            continue
        train_data, val_data = make_pipelines(config.augment, data, runtime, plan, first,
                                              start_step=step)
        with cluster_faults():
            model.fit(train_data, steps_per_epoch=plan.steps_per_epoch - step, epochs=end,
                      initial_epoch=first, validation_data=val_data,
                      callbacks=callbacks, shuffle=False,
                      verbose=1 if interactive() and runtime.chief else 0)
    if guard.bad_epoch:
        raise UserError(f"the loss became NaN or infinite in epoch {guard.bad_epoch}; "
                        f"{run_dir}/best.keras and last.keras hold the last good epoch. "
                        "Lower --lr (or raise --warmup-epochs) and rerun with --fresh")
    return recorder


def summarize(config, run_dir, data, plan, recorder, wall_seconds):
    """Evaluates best.keras on the test set once and writes summary.json, with the run's
    plan."""
    rows = recorder.rows
    best = load_model(run_dir / RunFolder.BEST)
    val_rows = [r for r in rows if "val_accuracy" in r]
    best_row = max(val_rows, key=lambda r: r["val_accuracy"]) if val_rows else rows[-1]
    summary = {
        "run": str(run_dir),
        "config": config.to_dict(),
        "versions": versions(),
        "device": plan.device,
        "plan": plan.to_dict(),
        # The plan's fields that 0.3 recorded at the top level, for the readers of 0.3.
        "precision": plan.precision,
        "jit": plan.jit,
        "replicas": plan.replicas,
        "steps_per_execution": plan.steps_per_execution,
        "augment_in_step": plan.augment_on == "step",
        "data": {**data.counts(), "image_size": list(data.image_size),
                 "preprocess": data.preprocessing},
        "parameters": int(best.network.count_params()),
        "trainable_parameters": int(sum(v.numpy().size for v in best.trainable_variables)),
        "epochs": len(rows),
        "best_epoch": best_row["epoch"],
        "best_val_accuracy": best_row.get("val_accuracy"),
        "wall_seconds": round(wall_seconds, 1),
        "train_images_per_second": round(
            plan.batch_size * plan.steps_per_epoch * recorder.trained_epochs
            / max(recorder.train_seconds, 1e-9), 1),
    }
    if data.x_test is not None:
        summary.update(test_metrics(best, data.x_test, data.y_test, data.fine_to_coarse))
    run_dir.write_summary(summary)
    print(final_figures(summary))
    print(f"run folder: {run_dir}")
    return summary


def final_figures(summary):
    """The run's last line of figures: the test set's, else the best validation epoch's."""
    test = {k: v for k, v in summary.items() if k.startswith("test_")}
    if test:
        return "test: " + "  ".join(f"{k[5:]} {100 * v:.2f}%" for k, v in test.items())
    if summary["best_val_accuracy"] is not None:
        return (f"no test split: validation accuracy {100 * summary['best_val_accuracy']:.2f}% "
                f"at epoch {summary['best_epoch']} (best.keras)")
    return "no test or validation split: no accuracy to report (the last epoch is best.keras)"

