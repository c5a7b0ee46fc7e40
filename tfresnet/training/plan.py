"""A run's `Plan`, decided once: input size, batch, steps, augmentation placement, XLA calls.

`tfresnet.train`, every keras-tuner trial (`tfresnet.tuning.search.ResNetHyperModel.build`
and ``fit``), the LR range test and ``tfresnet.bench --train`` plan through `make_plan`; the
model (`tfresnet.training.build`), the pipelines (`tfresnet.training.pipelines`), the
start-up lines and ``summary.json`` read the plan instead of deciding again. Like the other
run modules, this one reads the whole `TrainConfig`; what it calls takes settings views.
"""

import dataclasses

from tfresnet.data.augment import xla_compatible
from tfresnet.data.pipeline import train_steps
from tfresnet.errors import UserError
from tfresnet.models.settings import Transfer
from tfresnet.optim.optimizers import REFERENCE_BATCH, base_learning_rate, lr_is_scaled
from tfresnet.training.pipelines import load_data, make_augmenter


def input_size(config):
    """The model's input side: ``--image-size``, else a pretrained network's own (a
    tfresnet run's or a backbone's; None from scratch: the data set's)."""
    if config.image_size:
        return config.image_size
    return config.transfer_settings.input_size(config.model_settings.architecture)


def build_settings(config):
    """The settings views `tfresnet.training.build.build_model` takes, by its keyword
    arguments (as timm's ``optimizer_kwargs`` adapts its arguments)."""
    return {"model": config.model_settings, "transfer": config.transfer_settings,
            "loss": config.loss_settings, "optimizer": config.optimizer_settings,
            "schedule": config.schedule_settings, "augment": config.augment}


def prepare_run(config, runtime):
    """The data of a run and its `Plan`: the input size decided once, the data loaded at
    it, then the rest."""
    size = input_size(config)
    data = load_data(config.data_settings, config.seed, size)
    return data, make_plan(config, data, runtime, size)


MIN_DEFAULT_STEPS = 12  # 450 images: batch 32 beat 128 by 3.5 points (experiments/README)


def batch_and_steps(config, data, replicas=1):
    """The global batch (never more than the training set) and full batches per epoch, a
    multiple of ``--grad-accum``. Without ``--batch-size``: `REFERENCE_BATCH` per replica
    (the one-device default's work on each of N GPUs, as timm and Goyal et al. 2017 scale
    out), halved (not below 16 per replica) until an epoch has at least
    `MIN_DEFAULT_STEPS` batches; ``--lr`` then scales linearly with it
    (`tfresnet.optim.optimizers.lr_is_scaled`). An explicit ``--batch-size`` is the global
    batch."""
    batch = config.batch_size
    if batch is None:
        batch = REFERENCE_BATCH * replicas
        while batch > 16 * replicas and len(data.x_train) // batch < MIN_DEFAULT_STEPS:
            batch //= 2
        batch = min(batch, max(replicas, len(data.x_train) // replicas * replicas))
    batch = min(batch, len(data.x_train))
    steps = train_steps(len(data.x_train), batch)
    if steps < config.grad_accum:
        raise UserError(f"--grad-accum {config.grad_accum} needs that many batches per epoch "
                        f"and {len(data.x_train)} images at batch {batch} make {steps}; "
                        "lower --grad-accum or --batch-size")
    # Whole updates only: an epoch ends with its last update, never inside one.
    return batch, steps - steps % config.grad_accum


def augments_in_step(config, runtime):
    """Whether augmentation runs inside the compiled train step (on the accelerator) rather
    than in tf.data: when asked, or by default whenever the step is XLA-compiled and XLA
    can compile every augmentation."""
    xla_ok = xla_compatible(config.augment)
    if config.augment_on == "device" and config.grad_accum > 1:
        raise UserError("--grad-accum augments in tf.data (the step's seed counts updates, "
                        "not batches); use --augment-on auto or host")
    if config.augment_on == "device":
        if runtime.jit and not xla_ok:
            raise UserError(f"--augment {config.augment} cannot run inside an XLA-compiled "
                            "step (RandAugment has no XLA kernel); use --augment-on host "
                            "or --jit off")
        return True
    return (config.augment_on == "auto" and runtime.jit and xla_ok
            and config.grad_accum == 1)


MAX_STEPS_PER_EXECUTION = 16


def steps_per_execution(config, runtime, steps):
    """Train steps per compiled call, by a rule Keras' own loop runs correctly
    (`tfresnet.keras_fixes` says why): one under several replicas; on one device it
    divides the epoch's ``steps``. Auto: with XLA, the largest divisor of ``steps`` up to
    `MAX_STEPS_PER_EXECUTION` (351 steps: 13), else 1.

    Raises:
        UserError: an explicit ``--steps-per-execution`` Keras would run wrongly.
    """
    chosen = config.steps_per_execution
    replicas = runtime.strategy.num_replicas_in_sync
    if chosen > 1 and replicas > 1:
        raise UserError(f"--steps-per-execution {chosen} needs one device: Keras runs the "
                        "steps of an execution inside a tf.cond, where tf.distribute's "
                        f"cross-replica ops fail; use 1 or 0 (auto) with {replicas} replicas")
    if chosen and steps % chosen:
        divisors = [d for d in range(1, min(steps, 64) + 1) if steps % d == 0]
        raise UserError(f"--steps-per-execution {chosen} does not divide the epoch's {steps} "
                        "steps (Keras would run past the end of each epoch); use 0 (auto) or "
                        f"a divisor: {', '.join(map(str, divisors))}")
    if chosen:
        return chosen
    if not runtime.jit or replicas > 1:
        return 1
    return max(d for d in range(1, MAX_STEPS_PER_EXECUTION + 1) if steps % d == 0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What assembly decided for one run, resolved once (`make_plan`) and recorded in
    ``summary.json``: the model, the pipelines, the callbacks, the start-up line, the tuner's
    trials, the LR range test and bench read it instead of deciding again."""

    batch_size: int  # the global batch
    steps_per_epoch: int  # full batches an epoch, a multiple of --grad-accum
    updates_per_epoch: int
    steps_per_execution: int
    augment_on: str  # "step" (inside the compiled step), "tf.data" or "none"
    input_size: int | None  # the network's input side (None: the data's own)
    image_size: tuple  # the images' (height, width) as the pipelines feed them
    learning_rate: float  # the base learning rate, scaled to the batch where asked
    lr_scaled: bool
    precision: str
    jit: bool
    replicas: int
    workers: int
    device: str

    def to_dict(self):
        return {**dataclasses.asdict(self), "image_size": list(self.image_size)}


def make_plan(config, data, runtime, size):
    """The `Plan` of a run of ``config`` on ``data`` under ``runtime``, the network taking
    ``size`` (`input_size`). Refuses a combination Keras would run wrongly, before anything
    is built."""
    replicas = runtime.strategy.num_replicas_in_sync
    batch, steps = batch_and_steps(config, data, replicas)
    in_step = augments_in_step(config, runtime)
    if replicas > 1 and (config.ema or config.grad_accum > 1):
        raise UserError("--ema and --grad-accum are not tested under several replicas or "
                        "workers yet; train on one device (--strategy one) or drop them")
    augmenter = make_augmenter(config.augment, data, config.seed)
    augment = "none" if not augmenter else "step" if in_step else "tf.data"
    optimizer, batch_is_default = config.optimizer_settings, config.batch_size is None
    return Plan(batch_size=batch, steps_per_epoch=steps,
                updates_per_epoch=steps // config.grad_accum,
                steps_per_execution=steps_per_execution(config, runtime, steps),
                augment_on=augment, input_size=size, image_size=tuple(data.image_size),
                learning_rate=base_learning_rate(optimizer, batch, batch_is_default),
                lr_scaled=lr_is_scaled(optimizer, batch, batch_is_default),
                precision=runtime.precision, jit=bool(runtime.jit), replicas=replicas,
                workers=runtime.workers, device=runtime.device)


def describe_run(config, plan):
    """The start-up line: where and how the run computes, as planned."""
    augment = {"none": "none", "step": "in the compiled step",
               "tf.data": "in tf.data (host)"}[plan.augment_on]
    where = f"{plan.replicas} replicas on {plan.workers} worker(s)" if plan.replicas > 1 else (
        "1 device")
    lr = f"lr {plan.learning_rate:.3g}" + (
        f" (--lr {config.lr:g} scaled to the batch)" if plan.lr_scaled else "")
    per_replica = (f" ({plan.batch_size // plan.replicas} per replica)" if plan.replicas > 1
                   else "")
    return (f"{plan.device}, {where} | {plan.precision} | XLA "
            f"{'on' if plan.jit else 'off'} | batch {plan.batch_size}{per_replica} x "
            f"{plan.steps_per_epoch} steps, {plan.steps_per_execution} per execution | "
            f"augmentation {augment} | {lr}")


FEW_UPDATES = 20  # updates per epoch below which a run says how few it makes


def few_updates_note(config, data, plan):
    """A start-up note when an epoch makes fewer than `FEW_UPDATES` updates (a small
    folder): the total the run will make, and the better path for few images; else None."""
    updates, batch = plan.updates_per_epoch, plan.batch_size
    if updates >= FEW_UPDATES:
        return None
    note = (f"note: {len(data.x_train)} training images at batch {batch} make {updates} "
            f"updates an epoch, {updates * config.epochs} in all: few for a network to learn "
            "from scratch (on 246 photos, 1,200 updates beat 300 by 2-5 points); raise "
            "--epochs")
    if config.transfer is Transfer.NONE:
        note += ("; for a few hundred photos, fine-tune weights that know more instead: a "
                 "run of yours on a larger, varied set, offline (--transfer two-stage "
                 "--weights saved_models/RUN; CIFAR-10's gave 246 photos +18 points), or "
                 "ImageNet's (--model resnet50_imagenet --transfer finetune --weights "
                 "imagenet)")
    return note
