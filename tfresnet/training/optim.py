"""Optimizers and learning-rate schedules, built from a `TrainConfig`.

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


REFERENCE_BATCH = 128  # the default batch, and the one ``--lr`` is given for


def check_optimizer_settings(config):
    """A one-line `UserError` for optimizer settings (of a `TrainConfig`) no run can use."""
    if config.lr <= 0:
        raise UserError(f"--lr must be positive. Received: {config.lr}")
    for name in ("l2", "weight_decay", "warmup_epochs", "decay", "momentum"):
        if (getattr(config, name) or 0) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0. "
                            f"Received: {getattr(config, name)}")
    if not 0 <= config.ema < 1:
        raise UserError(f"--ema must be in [0, 1), e.g. 0.999. Received: {config.ema}")
    if config.grad_accum < 1 or config.clip_norm < 0:
        raise UserError("--grad-accum must be >= 1 and --clip-norm >= 0")
    if config.ema and config.transfer in ("finetune", "two-stage"):
        raise UserError(f"--ema does not work with --transfer {config.transfer} yet (its "
                        "backbone LR rescales updates after the average is taken); "
                        "drop one of them")
    if config.schedule == "step" and (not config.milestones or min(config.milestones) <= 0):
        raise UserError(f"--milestones must be positive epochs. Received: {config.milestones}")
    _refuse_unused(config)


# (setting, value, the settings that act only when it has that value)
USED_ONLY_WITH = (("schedule", "step", ("milestones", "gamma")),
                  ("schedule", "inverse_time", ("decay",)),
                  ("optimizer", "sgd", ("momentum", "nesterov")))


def _refuse_unused(config):
    """A one-line `UserError` for an optimizer or schedule setting given (not its default)
    where the run would ignore it."""
    if config.schedule == "onecycle" and config.warmup_epochs:
        raise UserError("--schedule onecycle has its own warm-up (it rises from lr/25 over "
                        "the first 30% of the steps); drop --warmup-epochs")
    for setting, value, names in USED_ONLY_WITH:
        given = [f"--{n.replace('_', '-')}" for n in names if config.is_set(n)]
        if given and getattr(config, setting) != value:
            several = len(given) > 1
            raise UserError(f"{' and '.join(given)} {'act' if several else 'acts'} only with "
                            f"--{setting} {value}, not {getattr(config, setting)}; drop "
                            f"{'them' if several else 'it'} or pass --{setting} {value}")
    if config.is_set("l2_on") and not config.l2:
        raise UserError("--l2-on picks the variables --l2 decays, and --l2 is 0; set --l2 "
                        "or drop --l2-on")


def lr_is_scaled(config, batch_size):
    """Whether ``--lr`` is scaled to the batch: with ``--scale-lr``, and without
    ``--batch-size`` whenever the default batch is not `REFERENCE_BATCH`: lowered for a small
    training set (on 246 real photos the scaled lr gave +3.0 points in 20 epochs and +7.2 in
    80, experiments/README), or raised to 128 per replica on several devices."""
    return config.scale_lr or (config.batch_size is None and batch_size != REFERENCE_BATCH)


def base_learning_rate(config, batch_size):
    """The configured lr; where `lr_is_scaled`, scaled linearly by the samples of one update
    (the global ``batch_size`` times ``--grad-accum``) / `REFERENCE_BATCH`."""
    if not lr_is_scaled(config, batch_size):
        return config.lr
    return config.lr * batch_size * config.grad_accum / REFERENCE_BATCH


def _inverse_time(config, lr, steps_per_epoch, total):
    return keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1,
                                                       decay_rate=config.decay)


def _step(config, lr, steps_per_epoch, total):
    milestones = sorted(config.milestones)  # positive: checked by TrainConfig.validate
    values = [lr * config.gamma**i for i in range(len(milestones) + 1)]
    # Keras switches *after* a boundary step; epoch m starts at step m * steps_per_epoch.
    boundaries = [m * steps_per_epoch - 1 for m in milestones]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


DEFAULT_WARMUP_EPOCHS = {"cosine": 2.0}  # by schedule; the others: none


def warmup_epochs(config):
    """``--warmup-epochs``, else its schedule's default (`DEFAULT_WARMUP_EPOCHS`)."""
    if config.warmup_epochs is not None:
        return config.warmup_epochs
    return DEFAULT_WARMUP_EPOCHS.get(config.schedule, 0.0)


def warmup_steps(config, steps_per_epoch, total):
    """The updates of the warm-up (`warmup_epochs`), fewer than the ``total``."""
    return max(0, min(total - 1, round(warmup_epochs(config) * steps_per_epoch)))


def _cosine(config, lr, steps_per_epoch, total):
    warmup = warmup_steps(config, steps_per_epoch, total)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(lr, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=lr,
                                                  warmup_steps=warmup)


# name -> (config, peak lr, steps per epoch, total steps) -> rate or schedule.
SCHEDULES = {
    "constant": lambda config, lr, steps_per_epoch, total: lr,
    "inverse_time": _inverse_time,
    "step": _step,
    "cosine": _cosine,
    "onecycle": lambda config, lr, steps_per_epoch, total: OneCycle(lr, total),
}

# name -> (config, learning rate, decoupled weight decay or None, keyword arguments every
# Keras optimizer takes) -> optimizer.
OPTIMIZERS = {
    "sgd": lambda config, lr, decay, common: keras.optimizers.SGD(
        lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay, **common),
    "adam": lambda config, lr, decay, common: keras.optimizers.Adam(
        lr, weight_decay=decay, **common),
    "adamw": lambda config, lr, decay, common: keras.optimizers.AdamW(
        lr, weight_decay=config.weight_decay, **common),
}


def make_schedule(config, updates_per_epoch, batch_size):
    """The learning rate as a float or a schedule of the optimizer updates, after its
    warm-up (`warmup_steps`; cosine's is Keras' own, in its `CosineDecay`)."""
    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {config.schedule!r}")
    total = max(1, config.epochs * updates_per_epoch)
    rate = SCHEDULES[config.schedule](config, base_learning_rate(config, batch_size),
                                     updates_per_epoch, total)
    warmup = warmup_steps(config, updates_per_epoch, total)
    if warmup and config.schedule != "cosine":
        return LinearWarmup(rate, warmup)
    return rate


def make_optimizer(config, steps_per_epoch, batch_size):
    """The configured optimizer, with Keras' own EMA of the weights (``--ema``), gradient
    accumulation (``--grad-accum``) and global-norm clipping (``--clip-norm``). Decoupled
    ``weight_decay`` skips BN and bias variables.

    Args:
        config: a `TrainConfig`.
        steps_per_epoch: batches in one epoch (a multiple of ``--grad-accum``).
        batch_size: the global batch (for ``--scale-lr``).
    """
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {config.optimizer!r}; choose one of "
                        f"{', '.join(OPTIMIZERS)}")
    decay = config.weight_decay or None
    rate = make_schedule(config, steps_per_epoch // config.grad_accum, batch_size)
    schedule = keras.optimizers.schedules.LearningRateSchedule
    if config.grad_accum > 1 and isinstance(rate, schedule):
        rate = PerUpdate(rate, config.grad_accum)
    # Keras updates the average at every batch, also between accumulated updates.
    momentum = config.ema ** (1 / config.grad_accum) if config.ema else 0.99
    common = {"use_ema": bool(config.ema), "ema_momentum": momentum,
              "gradient_accumulation_steps": config.grad_accum if config.grad_accum > 1
              else None, "global_clipnorm": config.clip_norm or None}
    optimizer = OPTIMIZERS[config.optimizer](config, rate, decay, common)
    if decay or config.optimizer == "adamw":
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def current_learning_rate(optimizer):
    """The learning rate the optimizer applied at its latest step, as a float.

    ``optimizer.learning_rate`` is the rate of the *next* step; the schedule, rebuilt from
    the optimizer's public config, gives the one just applied.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under mixed precision
    rate = inner.get_config()["learning_rate"]
    if isinstance(rate, dict):  # a serialized schedule (of batches: see `PerUpdate`)
        schedule = keras.optimizers.schedules.deserialize(rate)
        last_update = max(0, int(inner.iterations.numpy()) - 1)
        rate = schedule(last_update * (inner.gradient_accumulation_steps or 1))
    return float(keras.ops.convert_to_numpy(rate))
