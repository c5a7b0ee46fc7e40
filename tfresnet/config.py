"""`TrainConfig`: every setting of a training run, its JSON form and its command line.

Precedence: the defaults (the best recipe) <- ``--config file.json`` <- ``--hparams
best_hparams.json`` (from ``tfresnet.tune``) <- flags given explicitly. A key or flag that
does not exist is a one-line error. The resolved config is saved in the run folder.
"""

import argparse
import dataclasses
import json
import re
import typing
from pathlib import Path

from tfresnet.compat import VALUE_ALIASES, current
from tfresnet.data import check_data_settings
from tfresnet.data.folders import VIEWS
from tfresnet.data.pipeline import AUGMENT_PLACES
from tfresnet.errors import UserError
from tfresnet.losses import L2_TARGETS
from tfresnet.models import check_model_settings
from tfresnet.models.resnet import STEMS
from tfresnet.models.transfer import TRANSFER_MODES
from tfresnet.training.optim import OPTIMIZERS, SCHEDULES, check_optimizer_settings
from tfresnet.training.runtime import JIT_MODES, PRECISIONS, STRATEGIES


def _field(default, help, group, choices=None, **kwargs):
    metadata = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


DURATION_UNITS = {"s": 1, "min": 60, "h": 3600}


def checkpoint_interval(text):
    """``--checkpoint-every``: ``(steps, None)`` for a number, ``(None, seconds)`` for a
    duration such as ``90s``, ``10min`` or ``1h``."""
    match = re.fullmatch(r"\s*(\d+)\s*(s|min|h)?\s*", str(text))
    if not match or int(match.group(1)) == 0:
        raise UserError("--checkpoint-every takes a number of steps (500) or a duration "
                        f"(90s, 10min, 1h). Received: {text!r}")
    count, unit = int(match.group(1)), match.group(2)
    return (None, count * DURATION_UNITS[unit]) if unit else (count, None)


@dataclasses.dataclass
class TrainConfig:
    """One training run. The defaults are the recommended CIFAR-100 recipe: SGD with
    Nesterov momentum at 0.1, cosine decay after a linear warm-up, L2 5e-4 on the kernels,
    crop + flip, batch 128, 200 epochs."""

    # Model
    model: str = _field("resnet18", "registry name (see --help of tfresnet.models)", "model")
    stem: str = _field("cifar", "ResNet stem", "model", list(STEMS))
    width: float = _field(1.0, "channel width multiplier", "model")
    dropout: float = _field(0.0, "dropout before the classifier", "model")
    zero_init_residual: bool = _field(False, "zero the last BN gamma of each block", "model")
    transfer: str = _field("none", "pretrained backbone mode (scratch: same net, random "
                           "weights)", "transfer", list(TRANSFER_MODES))
    weights: str | None = _field(
        None, "'imagenet', a keras-hub preset (name, hf:// or kaggle:// handle, directory), "
        "a timm checkpoint directory, or a .weights.h5/.h5/.keras file", "transfer")
    backbone_lr: float = _field(0.1, "backbone LR multiplier (finetune, two-stage)",
                                "transfer")
    head_epochs: int = _field(3, "two-stage: epochs training only the head", "transfer")
    # Data
    dataset: str = _field("cifar100", "cifar100, cifar10, digits or an image folder", "data")
    data_dir: str | None = _field(None, "folder with (or for) the CIFAR pickles", "data")
    val_size: int | None = _field(
        None, "validation images held out of training (default 10%%; 0 = none)", "data")
    image_size: int | None = _field(
        None, "model input side: image folders are decoded at it, pretrained backbones "
        "resize to it inside the model (default: the backbone's, 224 for the ImageNet "
        "ResNets; 64 for image folders from scratch)", "data")
    preprocess: str = _field(
        "auto", "image folders: 'small' resizes and augments as CIFAR, 'photo' takes random-"
        "resized crops to train and centre crops to evaluate (auto: small when every "
        "training image is square and at most 64 px)", "data", list(VIEWS))
    crop_scale: list[float] = _field([0.35, 1.0], "photo: area range of the random-resized "
                                     "crop, as fractions of the image (torchvision's 0.08 "
                                     "lost 1.3-2 points in short transfer runs)", "data")
    crop_ratio: list[float] = _field([0.75, 4 / 3], "photo: aspect-ratio range (width / "
                                     "height) of the random-resized crop", "data")
    eval_crop: float = _field(0.875, "photo: centre crop to evaluate, as a fraction of the "
                              "shorter side", "data")
    augment: str = _field("standard", "preset (none, shift_flip, standard, strong) or spec",
                          "data")
    augment_on: str = _field("auto", "where augmentation runs (auto: device on a GPU)",
                             "data", list(AUGMENT_PLACES))
    # Optimizer
    optimizer: str = _field("sgd", "optimizer", "optimizer", list(OPTIMIZERS))
    lr: float = _field(0.1, "peak learning rate (per --batch-size, see --scale-lr)", "optimizer")
    momentum: float = _field(0.9, "SGD momentum", "optimizer")
    nesterov: bool = _field(True, "Nesterov momentum for SGD", "optimizer")
    weight_decay: float = _field(0.0, "decoupled weight decay of the optimizer", "optimizer")
    schedule: str = _field("cosine", "learning-rate schedule", "optimizer", list(SCHEDULES))
    warmup_epochs: float | None = _field(
        None, "epochs of linear warm-up from 0 to the schedule's rate (default 2 for cosine, "
        "0 for the others; onecycle has its own rise)", "optimizer")
    milestones: list[int] = _field([60, 120, 160], "epochs where 'step' multiplies by gamma",
                                   "optimizer")
    gamma: float = _field(0.2, "factor of the 'step' schedule", "optimizer")
    decay: float = _field(0.0, "inverse_time rate: lr / (1 + decay * step)", "optimizer")
    scale_lr: bool = _field(False, "scale lr by global batch (times --grad-accum) / 128",
                            "optimizer")
    ema: float = _field(0.0, "momentum of an exponential moving average of the weights, "
                        "which validation, best.keras and the test use (0: off; e.g. 0.999)",
                        "optimizer")
    grad_accum: int = _field(1, "average the gradients of this many batches per update",
                             "optimizer")
    clip_norm: float = _field(0.0, "clip the gradients' global norm to this (0: off)",
                              "optimizer")
    # Loss
    l2: float = _field(5e-4, "L2 weight: loss = ce + l2/2 * sum(w^2)", "loss")
    l2_on: str = _field("kernels", "variables the L2 covers", "loss", list(L2_TARGETS))
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy", "loss")
    # Training
    epochs: int = _field(200, "epochs to train", "training")
    batch_size: int | None = _field(
        None, "global batch size (default 128, halved until an epoch has at least 12 "
        "batches: small data sets get more steps)", "training")
    seed: int = _field(0, "seed of initialisation, split, shuffling and augmentation", "training")
    deterministic: bool = _field(False, "make TensorFlow ops deterministic (slower)", "training")
    precision: str = _field("auto", "auto: mixed_bfloat16 on A100/H100-class GPUs, "
                            "mixed_float16 on V100/T4, else float32", "training",
                            list(PRECISIONS))
    jit: str = _field("auto", "XLA compilation (auto: on with one GPU, off with several "
                      "replicas)", "training", list(JIT_MODES))
    steps_per_execution: int = _field(0, "train steps per compiled call (0 = auto)", "training")
    strategy: str = _field("auto", "tf.distribute strategy (auto: several workers under "
                           "TF_CONFIG or Slurm, else every GPU)", "training", list(STRATEGIES))
    sync_bn: bool = _field(False, "synchronise batch-norm statistics across replicas",
                           "training")
    # Output
    name: str | None = _field(None, "run folder name (default model-dataset-time)", "output")
    output_dir: str = _field("saved_models", "where run folders go", "output")
    tensorboard: bool = _field(True, "write TensorBoard logs", "output")
    visualize: bool = _field(True, "draw test_visualisation.png at the end", "output")
    log_every: int = _field(50, "outside a terminal or notebook (no progress bar), a step "
                            "line every this many steps; 0: none", "output")
    checkpoint_every: str | None = _field(
        None, "also save the resume state inside epochs: every N steps (500) or a duration "
        "(90s, 10min, 1h)", "output")

    def __post_init__(self):
        for key in VALUE_ALIASES:  # names of 0.1 (tfresnet.compat)
            setattr(self, key, current(key, getattr(self, key)))
        for field in dataclasses.fields(self):  # tuples from Python are lists in JSON
            if isinstance(getattr(self, field.name), tuple):
                setattr(self, field.name, list(getattr(self, field.name)))

    @classmethod
    def keys(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self):
        return dataclasses.asdict(self)

    def is_set(self, name):
        """Whether setting ``name`` differs from its default: how checks tell a value the
        user chose (a config holds values, not which flags were given)."""
        return getattr(self, name) != _default(self.__dataclass_fields__[name])

    def updated(self, values, source):
        """A copy with ``values`` applied; unknown keys are an error naming ``source``."""
        unknown = sorted(set(values) - set(self.keys()))
        if unknown:
            raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                            f"see --help for the valid ones")
        return dataclasses.replace(self, **values)

    def validate(self):
        """Raises a one-line `UserError` for a value no run can use: the choices and the
        run's own settings here, the rest by the module each setting belongs to (models,
        data, optimizer), all before any data is loaded or downloaded."""
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                raise UserError(f"--{field.name.replace('_', '-')} must be one of "
                                f"{', '.join(choices)}. Received: {getattr(self, field.name)!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive. "
                                f"Received: {getattr(self, name)}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0. Received: {self.seed}")
        if self.log_every < 0:
            raise UserError(f"--log-every must be >= 0. Received: {self.log_every}")
        if self.checkpoint_every is not None:
            checkpoint_interval(self.checkpoint_every)
            if self.grad_accum > 1:
                raise UserError("--checkpoint-every saves between updates, which --grad-accum "
                                "spreads over several steps; drop one of them")
        if self.steps_per_execution < 0:
            raise UserError("--steps-per-execution must be >= 0 (0 = auto)")
        check_model_settings(self)
        check_data_settings(self)
        check_optimizer_settings(self)
        return self


def read_json(path, what):
    """Reads a JSON object from ``path``; any failure is a one-line `UserError`."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist")
    except (OSError, ValueError) as err:
        raise UserError(f"{what} file {path} is not valid JSON: {err}")
    if not isinstance(values, dict):
        raise UserError(f"{what} file {path} must hold a JSON object")
    return values


def _argument_type(field):
    hint = field.type
    args = typing.get_args(hint)
    if args and type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) in (list, list):
        return typing.get_args(hint)[0], "+"
    return hint, None


def add_config_arguments(parser):
    """Adds one flag per `TrainConfig` field, grouped; absent flags stay absent."""
    groups = {}
    for field in dataclasses.fields(TrainConfig):
        group_name = field.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        flag = "--" + field.name.replace("_", "-")
        text = field.metadata["help"]
        if "(default" not in text:  # else it says how the default is decided
            text += f" (default: {_default(field)})"
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": text}
        kind, nargs = _argument_type(field)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, nargs=nargs, metavar=field.name.upper())
            if field.metadata["choices"]:
                kwargs["choices"] = field.metadata["choices"]
                kwargs.pop("metavar")
            if field.name in VALUE_ALIASES:  # old names on the command line too
                kwargs["type"] = lambda value, name=field.name: current(name, value)
        groups[group_name].add_argument(flag, **kwargs)


def _default(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def resolve_config(args):
    """Applies ``--config`` and ``--hparams`` files, then explicit flags, to the defaults."""
    config = TrainConfig()
    if getattr(args, "config", None):
        config = config.updated(read_json(args.config, "--config"), args.config)
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.keys()}
    if getattr(args, "hparams", None):
        hparams = read_json(args.hparams, "--hparams")
        tuned_model = hparams.get("model")
        wanted_model = flags.get("model", config.model if args.config else tuned_model)
        if tuned_model is not None and tuned_model != wanted_model:
            raise UserError(f"{args.hparams} was tuned for model {tuned_model!r}, not "
                            f"{wanted_model!r}; tune again or drop --hparams")
        config = config.updated(hparams, args.hparams)
    return config.updated(flags, "command line").validate()
