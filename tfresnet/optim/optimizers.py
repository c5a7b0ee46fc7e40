"""Optimizers: the `OPTIMIZERS` registry, the learning rate scaled to the batch, the build."""

import keras

from tfresnet.errors import UserError
from tfresnet.optim.schedules import PerUpdate, make_schedule

REFERENCE_BATCH = 128  # the default batch, and the one ``--lr`` is given for


def lr_is_scaled(settings, batch_size, batch_is_default):
    """Whether ``--lr`` is scaled to the batch: with ``--scale-lr``, and whenever the batch
    tfresnet chose (``batch_is_default``: no ``--batch-size``) is not `REFERENCE_BATCH`:
    lowered for a small training set (on 246 real photos the scaled lr gave +3.0 points in
    20 epochs and +7.2 in 80, experiments/README), or raised to 128 per replica on several
    devices."""
    return settings.scale_lr or (batch_is_default and batch_size != REFERENCE_BATCH)


def base_learning_rate(settings, batch_size, batch_is_default):
    """The `OptimizerSettings`' lr; where `lr_is_scaled`, scaled linearly by the samples of
    one update (the global ``batch_size`` times ``--grad-accum``) / `REFERENCE_BATCH`."""
    if not lr_is_scaled(settings, batch_size, batch_is_default):
        return settings.lr
    return settings.lr * batch_size * settings.grad_accum / REFERENCE_BATCH


# name -> (`OptimizerSettings`, learning rate, decoupled weight decay or None, keyword
# arguments every Keras optimizer takes) -> optimizer. Adding one is an entry here, and
# its own settings are fields of `OptimizerSettings` (tests/test_extensions.py).
OPTIMIZERS = {
    "sgd": lambda settings, lr, decay, common: keras.optimizers.SGD(
        lr, momentum=settings.momentum, nesterov=settings.nesterov, weight_decay=decay,
        **common),
    "adam": lambda settings, lr, decay, common: keras.optimizers.Adam(
        lr, weight_decay=decay, **common),
    "adamw": lambda settings, lr, decay, common: keras.optimizers.AdamW(
        lr, weight_decay=settings.weight_decay, **common),
}


def make_optimizer(settings, schedule, learning_rate, steps_per_epoch):
    """The optimizer of the `OptimizerSettings`, with Keras' own EMA of the weights
    (``--ema``), gradient accumulation (``--grad-accum``) and global-norm clipping
    (``--clip-norm``). Decoupled ``weight_decay`` skips BN and bias variables.

    Args:
        settings: the `OptimizerSettings`.
        schedule: the `ScheduleSettings`.
        learning_rate: the schedule's peak (`base_learning_rate`).
        steps_per_epoch: batches in one epoch (a multiple of ``--grad-accum``).
    """
    if settings.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {settings.optimizer!r}; choose one of "
                        f"{', '.join(OPTIMIZERS)}")
    decay = settings.weight_decay or None
    accumulation = settings.grad_accum
    rate = make_schedule(schedule, learning_rate, steps_per_epoch // accumulation)
    if accumulation > 1 and isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = PerUpdate(rate, accumulation)
    # Keras updates the average at every batch, also between accumulated updates.
    momentum = settings.ema ** (1 / accumulation) if settings.ema else 0.99
    common = {"use_ema": bool(settings.ema), "ema_momentum": momentum,
              "gradient_accumulation_steps": accumulation if accumulation > 1 else None,
              "global_clipnorm": settings.clip_norm or None}
    optimizer = OPTIMIZERS[settings.optimizer](settings, rate, decay, common)
    if decay or settings.optimizer == "adamw":
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
