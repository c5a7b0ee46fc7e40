"""Learning-rate schedules: the Keras schedule classes, the `SCHEDULES` registry, warm-up.

Every schedule is a function of the optimizer's step counter, so a resumed run continues
exactly where it stopped. Each but ``onecycle`` (which rises itself) can start with a
linear warm-up (``--warmup-epochs``; by default 2 epochs for cosine only). The seed's
Keras 2 ``Adam(lr, decay=d)`` -- removed in Keras 3 -- is ``schedule="inverse_time"`` with
``decay=d``: ``lr / (1 + d * step)``.
"""

import math

import keras

from tfresnet.errors import UserError


@keras.saving.register_keras_serializable(package="tfresnet")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle policy (Smith & Topin, arXiv 1708.07120): linear rise from
    ``peak / div_factor`` to ``peak`` over ``pct_start`` of the steps, then cosine
    annealing to ``peak / final_div_factor``."""

    def __init__(self, peak, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        self.peak = peak
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rise = max(1.0, self.pct_start * self.total_steps)
        fall = max(1.0, self.total_steps - rise)
        start, end = self.peak / self.div_factor, self.peak / self.final_div_factor
        up = start + (self.peak - start) * step / rise
        progress = keras.ops.clip((step - rise) / fall, 0.0, 1.0)
        down = end + (self.peak - end) * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < rise, up, down)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


@keras.saving.register_keras_serializable(package="tfresnet")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` (a schedule or a constant rate) times a linear rise from 0 to 1 over
    ``warmup_steps``, then ``schedule`` itself: its steps still count from the first (a
    ``step`` milestone stays at its epoch)."""

    def __init__(self, schedule, warmup_steps):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule = schedule
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else self.schedule
        rise = keras.ops.cast(step, "float32") / self.warmup_steps
        return keras.ops.minimum(rise, 1.0) * rate

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tfresnet")
class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` counted in optimizer updates: Keras calls a schedule with the count of
    batches, which under gradient accumulation is ``accumulation`` times the updates."""

    def __init__(self, schedule, accumulation):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule = schedule
        self.accumulation = accumulation

    def __call__(self, step):
        return self.schedule(step // self.accumulation)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "accumulation": self.accumulation}


def _inverse_time(settings, lr, steps_per_epoch, total):
    return keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1,
                                                       decay_rate=settings.decay)


def _step(settings, lr, steps_per_epoch, total):
    milestones = sorted(settings.milestones)  # positive: checked by ScheduleSettings
    values = [lr * settings.gamma**i for i in range(len(milestones) + 1)]
    # Keras switches *after* a boundary step; epoch m starts at step m * steps_per_epoch.
    boundaries = [m * steps_per_epoch - 1 for m in milestones]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


DEFAULT_WARMUP_EPOCHS = {"cosine": 2.0}  # by schedule; the others: none


def warmup_epochs(settings):
    """``--warmup-epochs`` of the `ScheduleSettings`, else its schedule's default
    (`DEFAULT_WARMUP_EPOCHS`)."""
    if settings.warmup_epochs is not None:
        return settings.warmup_epochs
    return DEFAULT_WARMUP_EPOCHS.get(settings.schedule, 0.0)


def warmup_steps(settings, steps_per_epoch, total):
    """The updates of the warm-up (`warmup_epochs`), fewer than the ``total``."""
    return max(0, min(total - 1, round(warmup_epochs(settings) * steps_per_epoch)))


def _cosine(settings, lr, steps_per_epoch, total):
    warmup = warmup_steps(settings, steps_per_epoch, total)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(lr, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=lr,
                                                  warmup_steps=warmup)


# name -> (`ScheduleSettings`, peak lr, steps per epoch, total steps) -> rate or schedule.
SCHEDULES = {
    "constant": lambda settings, lr, steps_per_epoch, total: lr,
    "inverse_time": _inverse_time,
    "step": _step,
    "cosine": _cosine,
    "onecycle": lambda settings, lr, steps_per_epoch, total: OneCycle(lr, total),
}


def make_schedule(settings, learning_rate, updates_per_epoch):
    """The learning rate of the `ScheduleSettings` as a float or a schedule of the
    optimizer updates, peaking at ``learning_rate``, after its warm-up (`warmup_steps`;
    cosine's is Keras' own, in its `CosineDecay`)."""
    if settings.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {settings.schedule!r}")
    total = max(1, settings.epochs * updates_per_epoch)
    rate = SCHEDULES[settings.schedule](settings, learning_rate, updates_per_epoch, total)
    warmup = warmup_steps(settings, updates_per_epoch, total)
    if warmup and settings.schedule != "cosine":
        return LinearWarmup(rate, warmup)
    return rate
