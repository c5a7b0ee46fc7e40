"""``python -m tfresnet.train``: train a model and leave a complete, resumable run folder.

Example:
    python -m tfresnet.train --epochs 150                       # ResNet18, CIFAR-100
    python -m tfresnet.train --config experiments/seed_v5.json  # the seed's recipe
    python -m tfresnet.train --dataset digits --epochs 5 --name demo
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import keras

from tfresnet.assemble import (
    batch_and_steps,
    build_model,
    describe_run,
    few_updates_note,
    load_data,
    make_pipelines,
    training_callbacks,
)
from tfresnet.callbacks import NanGuard, RunRecorder, StepLog, interactive, read_history
from tfresnet.checkpoint import atomic_write_text, load_model
from tfresnet.config import (
    TrainConfig,
    add_config_arguments,
    canonical,
    checkpoint_interval,
    resolve_config,
)
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.inference import test_metrics
from tfresnet.runtime import cluster_faults, configure, versions

# Settings a resumed run may change; any other difference means a different run.
RESUMABLE_CHANGES = {"epochs", "tensorboard", "visualize", "name", "output_dir", "log_every",
                     "checkpoint_every"}
# The resume points of a run folder: the last finished epoch, and a state inside the next.
RESUME_FILES = ("last.keras", "resume.keras")


def build_parser():
    parser = command_parser("tfresnet.train", __doc__)
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (see experiments/)")
    parser.add_argument("--hparams", metavar="FILE", help="best_hparams.json from tfresnet.tune")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run over instead of resuming it")
    add_config_arguments(parser)
    return parser


def _run_dir(config):
    """The run folder: ``--name``, else the newest unfinished run of the same settings,
    else a new ``model-dataset-time`` folder."""
    output = Path(config.output_dir)
    if config.name:
        return output / config.name
    wanted = _comparable(config.to_dict())
    candidates = sorted(output.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(candidates):
        if not (path.parent / "summary.json").exists():
            try:
                if _comparable(canonical(json.loads(path.read_text()))) == wanted:
                    return path.parent
            except ValueError:
                continue
    dataset = Path(config.dataset).name or "data"
    return output / f"{config.model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _comparable(values):
    return {k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}


def check_run_dir(config, fresh):
    """The run folder and whether it resumes; refuses a folder of other settings. Writes
    nothing."""
    run_dir = _run_dir(config)
    config_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()) and not fresh:
        if not config_path.exists():
            raise UserError(f"{run_dir} exists but is not a tfresnet run (no config.json); "
                            "pick another --name")
        # Settings added since the run was written have their defaults there.
        raw = canonical(json.loads(config_path.read_text()))
        saved = {**TrainConfig().to_dict(), **raw}
        if "preprocess" not in raw and Path(str(raw.get("dataset"))).is_dir():
            if saved["transfer"] != "none":  # decoded at 64 px, resized inside to 224
                raise UserError(f"{run_dir} trained on a folder before version 0.3, which "
                                "decoded it otherwise; rerun with --fresh to start over")
            saved.update(preprocess="small", image_size=saved["image_size"] or 64)
        changed = {k for k in set(saved) | set(config.to_dict())
                   if saved.get(k) != config.to_dict().get(k)} - RESUMABLE_CHANGES
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config.to_dict().get(k)!r}"
                               for k in sorted(changed))
            raise UserError(f"{run_dir} holds a run with other settings ({detail}); "
                            "use another --name, or --fresh to start it over")
    return run_dir, any((run_dir / name).exists() for name in RESUME_FILES) and not fresh


def write_run_dir(run_dir, config, data, fresh):
    """Creates the run folder (clearing it with ``fresh``) with config and class names."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in ("best.keras", *RESUME_FILES, "history.csv", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
    except PermissionError:
        raise UserError(f"no permission to write {run_dir}; pass --output-dir somewhere writable")
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    atomic_write_text(run_dir / "class_indices.json",
                      json.dumps(dict(enumerate(data.class_names)), indent=2) + "\n")


def _restore(model, run_dir, updates_per_epoch):
    """Loads weights and optimizer state from the newest resume point (`RESUME_FILES`);
    returns ``(finished epochs, steps done of the next)``."""
    found = {}
    for name in RESUME_FILES:
        if (run_dir / name).exists():
            _load_state(model, run_dir / name)
            found[name] = int(model.optimizer.iterations.numpy())
    newest = max(found, key=found.get)
    if newest != list(found)[-1]:  # the state loaded last is not the newest
        _load_state(model, run_dir / newest)
    return divmod(found[newest], updates_per_epoch)


def _load_state(model, path):
    try:
        model.load_weights(path)
    except Exception as err:
        raise UserError(f"{path} cannot be resumed from ({type(err).__name__}); rerun with "
                        "--fresh to start over")


def make_callbacks(config, run_dir, rows, data, chief=True):
    """The run's training callbacks (`tfresnet.assemble`), then the run folder's: the
    recorder and TensorBoard (into ``run_dir``: a scratch folder on workers other than
    the chief, which must write the same checkpoints in step with it), and on the chief,
    outside a terminal or notebook, the step log."""
    callbacks = training_callbacks(config)
    guard = next(c for c in callbacks if isinstance(c, NanGuard))
    ema = next((c for c in callbacks if isinstance(c, keras.callbacks.SwapEMAWeights)), None)
    every = checkpoint_interval(config.checkpoint_every) if config.checkpoint_every else (
        None, None)
    callbacks.append(RunRecorder(run_dir, config.epochs, rows,
                                 has_validation=len(data.x_val) > 0, guard=guard,
                                 title=f"{config.model} on {config.dataset}", ema=ema,
                                 checkpoint_every=every))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"),
                                                     profile_batch=0))
    if chief and config.log_every and not interactive():
        batch, steps = batch_and_steps(config, data)
        callbacks.append(StepLog(config.log_every, steps, batch))
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
    run_dir, resuming = check_run_dir(config, fresh)
    runtime = configure(config)
    runtime.agree({k: v for k, v in config.to_dict().items() if k != "output_dir"},
                  "the workers were started with different settings; start every worker "
                  "with the same command and flags")
    data = load_data(config)
    if runtime.chief:
        print(data.describe())
    model = build_model(config, data, runtime, pretrained=not resuming)
    batch, steps = batch_and_steps(config, data)
    if runtime.chief:
        print(describe_run(config, data, runtime, model, batch, steps))
        note = few_updates_note(config, data, batch, steps)
        if note:
            print(note)
    start = _restore(model, run_dir, steps // config.grad_accum) if resuming else (0, 0)
    start_epoch = start[0]
    runtime.agree(list(start), "the workers found different checkpoints in "
                  f"{run_dir}; the run folder must be one shared folder that every worker "
                  "reads (pass the same --output-dir on a shared file system)")
    if not runtime.chief:
        with tempfile.TemporaryDirectory(prefix="tfresnet-worker-") as scratch:
            _fit(config, model, Path(scratch), data, runtime, start, [], steps)
        runtime.barrier()
        return {}
    write_run_dir(run_dir, config, data, fresh)
    rows = [r for r in read_history(run_dir / "history.csv") if r["epoch"] <= start_epoch]
    if start_epoch >= config.epochs:
        print(f"{run_dir}: all {config.epochs} epochs already done")
    elif start[1]:
        print(f"resuming {run_dir} at step {start[1]} of epoch {start_epoch + 1}")
    elif resuming:
        print(f"resuming {run_dir} after epoch {start_epoch}")
    began = time.perf_counter()
    recorder = _fit(config, model, run_dir, data, runtime, start, rows, steps)
    summary = summarize(config, run_dir, data, runtime, recorder, model,
                        wall_seconds=time.perf_counter() - began, images=batch * steps)
    if config.visualize and data.x_test is not None:
        from tfresnet.visualize import draw_run

        draw_run(run_dir)
    runtime.barrier()
    return summary


def _fit(config, model, run_dir, data, runtime, start, rows, steps):
    """Trains from ``start`` (epoch, step) to the end, recording into ``run_dir``; returns
    the recorder. A run resumed inside an epoch first finishes that epoch in a ``fit`` of
    its remaining steps (whose training averages cover only those), then trains the rest."""
    start_epoch, start_step = start
    callbacks = make_callbacks(config, run_dir, rows, data, runtime.chief)
    guard = next(c for c in callbacks if isinstance(c, NanGuard))
    recorder = next(c for c in callbacks if isinstance(c, RunRecorder))
    phases = [(start_epoch, start_step, start_epoch + 1)] if start_step else []
    phases.append((start_epoch + bool(start_step), 0, config.epochs))
    for first, step, end in phases:
        if first >= end or guard.bad_epoch:
            continue
        train_data, val_data = make_pipelines(config, data, runtime, first, start_step=step)
        with cluster_faults():
            model.fit(train_data, steps_per_epoch=steps - step, epochs=end,
                      initial_epoch=first, validation_data=val_data,
                      callbacks=callbacks, shuffle=False,
                      verbose=1 if interactive() and runtime.chief else 0)
    if guard.bad_epoch:
        raise UserError(f"the loss became NaN or infinite in epoch {guard.bad_epoch}; "
                        f"{run_dir}/best.keras and last.keras hold the last good epoch. "
                        "Lower --lr (or raise --warmup-epochs) and rerun with --fresh")
    return recorder


def summarize(config, run_dir, data, runtime, recorder, model, wall_seconds, images):
    """Evaluates best.keras on the test set once and writes summary.json."""
    rows = recorder.rows
    best = load_model(run_dir / "best.keras")
    val_rows = [r for r in rows if "val_accuracy" in r]
    best_row = max(val_rows, key=lambda r: r["val_accuracy"]) if val_rows else rows[-1]
    summary = {
        "run": str(run_dir),
        "config": config.to_dict(),
        "versions": versions(),
        "device": runtime.device,
        "precision": runtime.precision,
        "jit": runtime.jit,
        "replicas": runtime.strategy.num_replicas_in_sync,
        "steps_per_execution": model.steps_per_execution,
        "augment_in_step": model.augmenter is not None,
        "data": {**data.counts(), "image_size": list(data.image_size),
                 "preprocess": data.x_train.view.kind if data.streamed else "in_memory"},
        "parameters": int(best.network.count_params()),
        "trainable_parameters": int(sum(v.numpy().size for v in best.trainable_variables)),
        "epochs": len(rows),
        "best_epoch": best_row["epoch"],
        "best_val_accuracy": best_row.get("val_accuracy"),
        "wall_seconds": round(wall_seconds, 1),
        "train_images_per_second": round(
            images * recorder.trained_epochs / max(recorder.train_seconds, 1e-9), 1),
    }
    if data.x_test is not None:
        summary.update(test_metrics(best, data.x_test, data.y_test, data.fine_to_coarse))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(resolve_config(args), fresh=args.fresh)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.train", main))


if __name__ == "__main__":
    cli()
