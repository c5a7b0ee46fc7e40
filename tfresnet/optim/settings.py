"""The optimizer's and the schedule's settings (`OptimizerSettings`, `ScheduleSettings`)."""

import dataclasses

from tfresnet.errors import UserError
from tfresnet.optim.optimizers import OPTIMIZERS
from tfresnet.optim.schedules import SCHEDULES
from tfresnet.settings import Settings, flag, setting


@dataclasses.dataclass(frozen=True)
class OptimizerSettings(Settings):
    """The optimizer and what shapes its updates (`tfresnet.optim.optimizers`)."""

    optimizer: str = setting("sgd", "optimizer", "optimizer", list(OPTIMIZERS))
    lr: float = setting(0.1, "peak learning rate (per --batch-size, see --scale-lr)",
                        "optimizer")
    momentum: float = setting(0.9, "SGD momentum", "optimizer")
    nesterov: bool = setting(True, "Nesterov momentum for SGD", "optimizer")
    weight_decay: float = setting(0.0, "decoupled weight decay of the optimizer", "optimizer")
    scale_lr: bool = setting(False, "scale lr by global batch (times --grad-accum) / 128",
                             "optimizer")
    ema: float = setting(0.0, "momentum of an exponential moving average of the weights, "
                         "which validation, best.keras and the test use (0: off; e.g. 0.999)",
                         "optimizer")
    grad_accum: int = setting(1, "average the gradients of this many batches per update",
                              "optimizer")
    clip_norm: float = setting(0.0, "clip the gradients' global norm to this (0: off)",
                               "optimizer")

    def validate(self):
        """Raises a one-line `UserError` for settings no optimizer can use; returns self."""
        self.check_choices()
        if self.lr <= 0:
            raise UserError(f"--lr must be positive. Received: {self.lr}")
        _refuse_negative(self, ("weight_decay", "momentum"))
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1), e.g. 0.999. Received: {self.ema}")
        if self.grad_accum < 1 or self.clip_norm < 0:
            raise UserError("--grad-accum must be >= 1 and --clip-norm >= 0")
        _refuse_unused(self, "optimizer", "sgd", ("momentum", "nesterov"))
        return self


@dataclasses.dataclass(frozen=True)
class ScheduleSettings(Settings):
    """The learning rate over the run (`tfresnet.optim.schedules`)."""

    schedule: str = setting("cosine", "learning-rate schedule", "optimizer", list(SCHEDULES))
    epochs: int = setting(200, "epochs to train", "training")
    warmup_epochs: float | None = setting(
        None, "epochs of linear warm-up from 0 to the schedule's rate (default 2 for cosine, "
        "0 for the others; onecycle has its own rise)", "optimizer")
    milestones: list[int] = setting([60, 120, 160], "epochs where 'step' multiplies by gamma",
                                    "optimizer")
    gamma: float = setting(0.2, "factor of the 'step' schedule", "optimizer")
    decay: float = setting(0.0, "inverse_time rate: lr / (1 + decay * step)", "optimizer")

    def validate(self):
        """Raises a one-line `UserError` for settings no schedule can use; returns self."""
        self.check_choices()
        if self.epochs <= 0:
            raise UserError(f"--epochs must be positive. Received: {self.epochs}")
        _refuse_negative(self, ("warmup_epochs", "decay"))
        if self.schedule == "step" and (not self.milestones or min(self.milestones) <= 0):
            raise UserError(f"--milestones must be positive epochs. Received: {self.milestones}")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise UserError("--schedule onecycle has its own warm-up (it rises from lr/25 over "
                            "the first 30% of the steps); drop --warmup-epochs")
        _refuse_unused(self, "schedule", "step", ("milestones", "gamma"))
        _refuse_unused(self, "schedule", "inverse_time", ("decay",))
        return self


def _refuse_negative(settings, names):
    for name in names:
        if (getattr(settings, name) or 0) < 0:
            raise UserError(f"{flag(name)} must be >= 0. Received: {getattr(settings, name)}")


def _refuse_unused(settings, setting_name, value, names):
    """A one-line `UserError` for settings ``names`` given (not their defaults) that act
    only when ``setting_name`` has ``value``, where it has another."""
    given = [flag(n) for n in names if settings.is_set(n)]
    actual = getattr(settings, setting_name)
    if given and actual != value:
        several = len(given) > 1
        raise UserError(f"{' and '.join(given)} {'act' if several else 'acts'} only with "
                        f"--{setting_name} {value}, not {actual}; drop "
                        f"{'them' if several else 'it'} or pass --{setting_name} {value}")
