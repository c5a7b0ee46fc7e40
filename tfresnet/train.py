"""``python -m tfresnet.train``: train a model and leave a complete, resumable run folder.

Example:
    python -m tfresnet.train --epochs 150                       # ResNet18, CIFAR-100
    python -m tfresnet.train --config experiments/seed_v5.json  # the seed's recipe
    python -m tfresnet.train --dataset digits --epochs 5 --name demo
"""

import json
import sys
import time
from pathlib import Path

import keras

from tfresnet.callbacks import NanGuard, RunRecorder, read_history
from tfresnet.checkpoint import atomic_write_text, load_model
from tfresnet.config import TrainConfig, add_config_arguments, resolve_config
from tfresnet.data import Dataset, load_dataset
from tfresnet.data.pipeline import Augmenter, make_eval_pipeline, make_train_pipeline, train_steps
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.inference import test_metrics
from tfresnet.losses import cross_entropy
from tfresnet.models import Classifier, TransferNet, get_model
from tfresnet.models.transfer import load_pretrained
from tfresnet.optim import make_optimizer
from tfresnet.runtime import configure, versions

# Settings a resumed run may change; any other difference means a different run.
RESUMABLE_CHANGES = {"epochs", "tensorboard", "visualize", "name", "output_dir"}


def build_parser():
    parser = command_parser("tfresnet.train", __doc__)
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (see experiments/)")
    parser.add_argument("--hparams", metavar="FILE", help="best_hparams.json from tfresnet.tune")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run over instead of resuming it")
    add_config_arguments(parser)
    return parser


def load_data(config):
    """Loads the configured data set (the one place train, tune and bench do it)."""
    size = (config.image_size, config.image_size) if config.image_size else None
    return load_dataset(config.dataset, data_dir=config.data_dir, val_size=config.val_size,
                        seed=config.seed, image_size=size)


def make_backbone(config, num_classes):
    """The network from the registry, or a pretrained backbone with a new head."""
    pretrained = config.model.endswith("_imagenet")
    if config.transfer == "none":
        if pretrained:
            raise UserError(f"{config.model} is a pretrained backbone: choose --transfer "
                            "frozen, finetune, two-stage or scratch")
        options = {"width": config.width}
        if config.model.startswith("resnet"):
            options.update(stem=config.stem, zero_init_residual=config.zero_init_residual)
        if config.dropout:
            options["dropout"] = config.dropout
        return get_model(config.model, num_classes, **options)
    frozen = config.transfer == "frozen"
    return TransferNet(config.model.removesuffix("_imagenet"), num_classes,
                       image_size=config.image_size or 224, dropout=config.dropout,
                       frozen_base=frozen, trainable_base=not frozen)


def build_model(config, data: Dataset, steps_per_epoch, runtime):
    """The compiled `Classifier` for ``config`` (call under the strategy's scope)."""
    backbone = make_backbone(config, data.num_classes)
    # Pretrained backbones bring their own preprocessing; the others use the data's stats.
    own_stats = isinstance(backbone, TransferNet)
    model = Classifier(backbone, [0.0] * 3 if own_stats else data.mean,
                       [1.0] * 3 if own_stats else data.std, data.class_names,
                       data.image_size, l2=config.l2, l2_on=config.l2_on,
                       dataset=config.dataset, name=f"{config.model}_classifier")
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=cross_entropy(config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(5, name="top5")],
        jit_compile=runtime.jit,
        steps_per_execution=config.steps_per_execution or (16 if runtime.jit else 1),
    )
    model(data.x_train[:1])
    model.optimizer.build(model.trainable_variables)
    return model


class TransferStages(keras.callbacks.Callback):
    """Sets the backbone's training mode at each epoch: two-stage trains only the head
    (backbone fixed, BN in inference mode) for ``head_epochs``, then everything with the
    backbone's updates scaled by ``backbone_lr``; finetune scales them from the start."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def on_epoch_begin(self, epoch, logs=None):
        head_only = self.config.transfer == "two-stage" and epoch < self.config.head_epochs
        multiplier = 0.0 if head_only else self.config.backbone_lr
        backbone = self.model.backbone
        if (backbone.frozen_base, self.model.base_lr_multiplier) != (head_only, multiplier):
            backbone.frozen_base = head_only
            self.model.base_lr_multiplier = multiplier
            self.model.make_train_function(force=True)
            if epoch == self.config.head_epochs and self.config.transfer == "two-stage":
                print(f"epoch {epoch + 1}: unfreezing the backbone (LR x {multiplier})")


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
                if _comparable(json.loads(path.read_text())) == wanted:
                    return path.parent
            except ValueError:
                continue
    dataset = Path(config.dataset).name or "data"
    return output / f"{config.model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _comparable(values):
    return {k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}


def prepare_run_dir(config, fresh):
    """Creates or checks the run folder; returns ``(run_dir, resuming)``."""
    run_dir = _run_dir(config)
    config_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()) and not fresh:
        if not config_path.exists():
            raise UserError(f"{run_dir} exists but is not a tfresnet run (no config.json); "
                            "pick another --name")
        saved = json.loads(config_path.read_text())
        changed = {k for k in set(saved) | set(config.to_dict())
                   if saved.get(k) != config.to_dict().get(k)} - RESUMABLE_CHANGES
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config.to_dict().get(k)!r}"
                               for k in sorted(changed))
            raise UserError(f"{run_dir} holds a run with other settings ({detail}); "
                            "use another --name, or --fresh to start it over")
    resuming = (run_dir / "last.keras").exists() and not fresh
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in ("best.keras", "last.keras", "history.csv", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
        atomic_write_text(config_path, json.dumps(config.to_dict(), indent=2) + "\n")
    except PermissionError:
        raise UserError(f"no permission to write {run_dir}; pass --output-dir somewhere writable")
    return run_dir, resuming


def _restore(model, run_dir, steps_per_epoch):
    """Loads weights and optimizer state from last.keras; returns the finished epochs."""
    try:
        model.load_weights(run_dir / "last.keras")
    except Exception as err:
        raise UserError(f"{run_dir / 'last.keras'} cannot be resumed from ({type(err).__name__}); "
                        "rerun with --fresh to start over")
    return int(model.optimizer.iterations.numpy()) // steps_per_epoch


def make_callbacks(config, run_dir, rows, data):
    """The callbacks of a run: NaN guard first, recorder, then TensorBoard."""
    guard = NanGuard()
    recorder = RunRecorder(run_dir, config.epochs, rows, has_validation=len(data.x_val) > 0,
                           guard=guard, title=f"{config.model} on {config.dataset}")
    callbacks = [guard, recorder]
    if config.transfer in ("finetune", "two-stage"):
        callbacks.insert(0, TransferStages(config))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"),
                                                     profile_batch=0))
    return callbacks


def train(config: TrainConfig, fresh=False):
    """Runs (or resumes) one training run; returns its summary dict."""
    config.validate()
    runtime = configure(config)
    run_dir, resuming = prepare_run_dir(config, fresh)
    data = load_data(config)
    atomic_write_text(run_dir / "class_indices.json",
                      json.dumps(dict(enumerate(data.class_names)), indent=2) + "\n")
    batch = min(config.batch_size, len(data.x_train))
    steps = train_steps(len(data.x_train), batch)
    augmenter = Augmenter(config.augment, data.num_classes, config.seed)
    with runtime.strategy.scope():
        model = build_model(config, data, steps, runtime)
    if resuming:
        start_epoch = _restore(model, run_dir, steps)
    else:
        start_epoch = 0
        if config.weights:
            load_pretrained(model.backbone, config.weights)
    rows = [r for r in read_history(run_dir / "history.csv") if r["epoch"] <= start_epoch]
    if start_epoch >= config.epochs:
        print(f"{run_dir}: all {config.epochs} epochs already done")
    elif resuming:
        print(f"resuming {run_dir} after epoch {start_epoch}")

    on_device = config.augment_on == "device" or (config.augment_on == "auto" and runtime.jit)
    model.train_augmenter = augmenter if (on_device and augmenter) else None
    train_data = _train_data(config, data, batch, None if on_device else augmenter,
                             start_epoch, runtime.strategy)
    val_data = (make_eval_pipeline(data.x_val, data.y_val, data.num_classes, batch)
                if len(data.x_val) else None)
    callbacks = make_callbacks(config, run_dir, rows, data)
    guard = next(c for c in callbacks if isinstance(c, NanGuard))
    recorder = next(c for c in callbacks if isinstance(c, RunRecorder))
    start = time.perf_counter()
    if start_epoch < config.epochs:
        model.fit(train_data, steps_per_epoch=steps, epochs=config.epochs,
                  initial_epoch=start_epoch, validation_data=val_data, callbacks=callbacks,
                  shuffle=False, verbose=1 if sys.stdout.isatty() else 0)
    if guard.bad_epoch:
        raise UserError(f"the loss became NaN or infinite in epoch {guard.bad_epoch}; "
                        f"{run_dir}/best.keras and last.keras hold the last good epoch. "
                        "Lower --lr (or raise --warmup-epochs) and rerun with --fresh")
    summary = summarize(config, run_dir, data, runtime, recorder,
                        wall_seconds=time.perf_counter() - start, images=batch * steps)
    if config.visualize and data.x_test is not None:
        from tfresnet.visualize import draw_run

        draw_run(run_dir)
    return summary


def _train_data(config, data, batch, augmenter, start_epoch, strategy):
    """The training stream; under tf.distribute each input pipeline (worker) yields its
    replicas' parts of every global batch."""
    def pipeline(split=None):
        return make_train_pipeline(data.x_train, data.y_train, data.num_classes, batch,
                                   augmenter, config.seed, start_epoch, split)[0]

    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return pipeline()
    return strategy.distribute_datasets_from_function(lambda context: pipeline(
        (replicas, context.num_input_pipelines, context.input_pipeline_id)))


def summarize(config, run_dir, data, runtime, recorder, wall_seconds, images):
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
        "parameters": int(best.backbone.count_params()),
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
    print(json.dumps({k: summary[k] for k in summary if k.startswith("test_")}))
    print(f"run folder: {run_dir}")
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(resolve_config(args), fresh=args.fresh)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.train", main))


if __name__ == "__main__":
    cli()
