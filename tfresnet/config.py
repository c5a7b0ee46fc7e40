"""`TrainConfig`: every setting of a training run, its JSON form and its command line.

Precedence: the defaults (the best recipe) <- ``--config file.json`` <- ``--hparams
best_hparams.json`` (from ``tfresnet.tune``) <- flags given explicitly. A key or flag that
does not exist is a one-line error. The resolved config is saved in the run folder.

Each part declares its settings in a small frozen view beside the code that reads it
(`VIEWS`); `TrainConfig` is made of their fields, then the run's own, and hands each part
its view (``config.optimizer_settings``, ...). The transfer mode is a `Transfer` member
here as everywhere; its string form is read and written here only (JSON and the flags).
"""

import argparse
import dataclasses
import enum
import json
import re
import typing
from pathlib import Path

from tfresnet.compat import VALUE_ALIASES, current
from tfresnet.data.settings import DataSettings
from tfresnet.errors import UserError
from tfresnet.losses import LossSettings
from tfresnet.models.settings import ModelSettings, TransferSettings
from tfresnet.optim.settings import OptimizerSettings, ScheduleSettings
from tfresnet.runtime.settings import RuntimeSettings
from tfresnet.settings import Settings, choice_error, default_of, flag, plain, setting

# The settings views, in the order of their flags in --help and their keys in config.json.
VIEWS = (ModelSettings, TransferSettings, DataSettings, OptimizerSettings, ScheduleSettings,
         LossSettings, RuntimeSettings)
GROUPS = ("model", "transfer", "data", "optimizer", "loss", "training", "output")  # of --help


def _fields(views):
    """The fields of ``views`` as `dataclasses.make_dataclass` takes them; each setting is
    declared by one view."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default,
                                                 default_factory=f.default_factory,
                                                 metadata=f.metadata))
              for view in views for f in dataclasses.fields(view)]
    names = [name for name, _, _ in fields]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"settings declared by two views: {', '.join(twice)}")
    return fields


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
class TrainConfig(dataclasses.make_dataclass("ViewSettings", _fields(VIEWS), bases=(Settings,))):
    """One training run: the settings of every view (`VIEWS`), then the run's own batch,
    compiled steps and output. The defaults are the recommended CIFAR-100 recipe: SGD with
    Nesterov momentum at 0.1, cosine decay after a linear warm-up, L2 5e-4 on the kernels,
    crop + flip, batch 128, 200 epochs."""

    # Training
    batch_size: int | None = setting(
        None, "global batch size (default 128, halved until an epoch has at least 12 "
        "batches: small data sets get more steps)", "training")
    steps_per_execution: int = setting(0, "train steps per compiled call (0 = auto)",
                                       "training")
    # Output
    name: str | None = setting(None, "run folder name (default model-dataset-time)", "output")
    output_dir: str = setting("saved_models", "where run folders go", "output")
    tensorboard: bool = setting(True, "write TensorBoard logs", "output")
    visualize: bool = setting(True, "draw test_visualisation.png at the end", "output")
    log_every: int = setting(50, "outside a terminal or notebook (no progress bar), a step "
                             "line every this many steps; 0: none", "output")
    checkpoint_every: str | None = setting(
        None, "also save the resume state inside epochs: every N steps (500) or a duration "
        "(90s, 10min, 1h)", "output")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in VALUE_ALIASES:  # names of 0.1 (tfresnet.compat)
                value = current(field.name, value)
            if isinstance(value, tuple):  # tuples from Python are lists in JSON
                value = list(value)
            if _is_enum(field.type) and not isinstance(value, field.type):  # JSON, a flag
                if value not in field.metadata["choices"]:
                    raise choice_error(field.name, field.metadata["choices"], value)
                value = field.type(value)
            setattr(self, field.name, value)

    @classmethod
    def keys(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self):
        """The settings as JSON holds them."""
        return {name: plain(value) for name, value in dataclasses.asdict(self).items()}

    def updated(self, values, source):
        """A copy with ``values`` applied; unknown keys are an error naming ``source``."""
        unknown = sorted(set(values) - set(self.keys()))
        if unknown:
            raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                            f"see --help for the valid ones")
        return dataclasses.replace(self, **values)

    def _view(self, view):
        return view(**{f.name: getattr(self, f.name) for f in dataclasses.fields(view)})

    @property
    def model_settings(self) -> ModelSettings:
        return self._view(ModelSettings)

    @property
    def transfer_settings(self) -> TransferSettings:
        return self._view(TransferSettings)

    @property
    def data_settings(self) -> DataSettings:
        return self._view(DataSettings)

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        return self._view(OptimizerSettings)

    @property
    def schedule_settings(self) -> ScheduleSettings:
        return self._view(ScheduleSettings)

    @property
    def loss_settings(self) -> LossSettings:
        return self._view(LossSettings)

    @property
    def runtime_settings(self) -> RuntimeSettings:
        return self._view(RuntimeSettings)

    def validate(self):
        """Raises a one-line `UserError` for a value no run can use, before any data is
        loaded or downloaded: each view checks its own settings, this the run's and those
        that span views. A tfresnet run given as ``--weights`` sets the model, stem and
        width first (`TransferSettings.taken_from_run`). Returns self."""
        self.check_choices()
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"--batch-size must be positive. Received: {self.batch_size}")
        if self.log_every < 0:
            raise UserError(f"--log-every must be >= 0. Received: {self.log_every}")
        if self.checkpoint_every is not None:
            checkpoint_interval(self.checkpoint_every)
            if self.grad_accum > 1:
                raise UserError("--checkpoint-every saves between updates, which --grad-accum "
                                "spreads over several steps; drop one of them")
        if self.steps_per_execution < 0:
            raise UserError("--steps-per-execution must be >= 0 (0 = auto)")
        transfer = self.transfer_settings.validate()
        for name, value in transfer.taken_from_run(self.model_settings).items():
            setattr(self, name, value)
        transfer.check_network(self.model_settings.validate())
        self.data_settings.validate()
        self.optimizer_settings.validate()
        if self.ema and self.transfer.scales_backbone:
            raise UserError(f"--ema does not work with --transfer {self.transfer} yet (its "
                            "backbone LR rescales updates after the average is taken); "
                            "drop one of them")
        self.schedule_settings.validate()
        self.loss_settings.validate()
        self.runtime_settings.validate()
        return self


def _is_enum(kind):
    return isinstance(kind, type) and issubclass(kind, enum.Enum)


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
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in dataclasses.fields(TrainConfig):
        text = field.metadata["help"]
        if "(default" not in text:  # else it says how the default is decided
            text += f" (default: {plain(default_of(field))})"
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": text}
        kind, nargs = _argument_type(field)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=str if _is_enum(kind) else kind, nargs=nargs,
                          metavar=field.name.upper())
            if field.metadata["choices"]:
                kwargs["choices"] = field.metadata["choices"]
                kwargs.pop("metavar")
            if field.name in VALUE_ALIASES:  # old names on the command line too
                kwargs["type"] = lambda value, name=field.name: current(name, value)
        groups[field.metadata["group"]].add_argument(flag(field.name), **kwargs)


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
