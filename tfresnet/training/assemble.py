"""How a run is put together: a validated `TrainConfig`, the data and the runtime in; the
run's `Plan` (decided once), then from it the compiled model (pretrained weights loaded),
the train and validation pipelines (with augmentation where it belongs) and the training
callbacks out.

`tfresnet.train`, every keras-tuner trial (`tfresnet.tuning.search.ResNetHyperModel.build`
and ``fit``), the LR range test and ``tfresnet.bench --train`` go through these functions;
none of them assembles a part of a run itself. ``train`` adds only what belongs to its run
folder (the recorder, TensorBoard).
"""

import dataclasses

import keras
import numpy as np

from tfresnet.config import TrainConfig
from tfresnet.data import load_dataset
from tfresnet.data.folders import ImageFiles
from tfresnet.data.pipeline import (
    PHOTO_REPLACED,
    Augmenter,
    make_eval_pipeline,
    make_train_pipeline,
    parse_augment,
    train_steps,
    xla_compatible,
)
from tfresnet.errors import UserError
from tfresnet.evaluation.inference import TOP_K, has_top_k
from tfresnet.losses import cross_entropy
from tfresnet.models import Classifier, ImagePreprocessor, RunTransferNet, TransferNet, get_model
from tfresnet.models.transfer import (
    PretrainedNet,
    backbone_input_size,
    is_preset,
    load_pretrained,
    preset_spec,
    resolve_weights,
    run_source,
)
from tfresnet.training import keras_fixes
from tfresnet.training.callbacks import NanGuard
from tfresnet.training.optim import (
    REFERENCE_BATCH,
    base_learning_rate,
    lr_is_scaled,
    make_optimizer,
)


def input_size(config):
    """The model's input side: ``--image-size``, else a pretrained network's own (a
    tfresnet run's or a backbone's; None from scratch: the data set's)."""
    if config.image_size:
        return config.image_size
    if config.transfer == "none":
        return None
    run = run_source(config.weights)
    if run is not None:
        return run.image_size
    arch = config.model.removesuffix("_imagenet")
    return backbone_input_size(arch, config.weights)


def load_data(config, size):
    """The configured data set, with its validation split; an image folder is listed (not
    decoded) with the input side ``size`` (`input_size`) and the run's preprocessing."""
    return load_dataset(config.dataset, data_dir=config.data_dir, val_size=config.val_size,
                        seed=config.seed, image_size=(size, size) if size else None,
                        view=config.preprocess, crop_scale=config.crop_scale,
                        crop_ratio=config.crop_ratio, eval_crop=config.eval_crop)


def is_photo(data):
    """Whether the data are an image folder in the photo view."""
    return data.streamed and data.x_train.view.kind == "photo"


def make_augmenter(config, data):
    """The batch augmentations of a run: the ``--augment`` spec, for photos without the
    operations each image's random-resized crop replaces."""
    return Augmenter(config.augment, data.num_classes, config.seed,
                     skip=PHOTO_REPLACED if is_photo(data) else ())


def training_images(config, images):
    """``images`` as training streams them: a photo folder takes its random-resized crop
    only when the ``--augment`` spec has an operation it replaces."""
    if not (isinstance(images, ImageFiles) and images.view.kind == "photo"):
        return images
    cropped = any(name in PHOTO_REPLACED for name, _ in parse_augment(config.augment))
    return ImageFiles(images.paths, dataclasses.replace(images.view, random_crop=cropped))


MIN_DEFAULT_STEPS = 12  # 450 images: batch 32 beat 128 by 3.5 points (experiments/README)


def batch_and_steps(config, data, replicas=1):
    """The global batch (never more than the training set) and full batches per epoch, a
    multiple of ``--grad-accum``. Without ``--batch-size``: `REFERENCE_BATCH` per replica
    (the one-device default's work on each of N GPUs, as timm and Goyal et al. 2017 scale
    out), halved (not below 16 per replica) until an epoch has at least
    `MIN_DEFAULT_STEPS` batches; ``--lr`` then scales linearly with it
    (`optim.lr_is_scaled`). An explicit ``--batch-size`` is the global batch."""
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
    (`tfresnet.training.keras_fixes` says why): one under several replicas; on one device it
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
    augment = "none" if not make_augmenter(config, data) else "step" if in_step else "tf.data"
    return Plan(batch_size=batch, steps_per_epoch=steps,
                updates_per_epoch=steps // config.grad_accum,
                steps_per_execution=steps_per_execution(config, runtime, steps),
                augment_on=augment, input_size=size, image_size=tuple(data.image_size),
                learning_rate=base_learning_rate(config, batch),
                lr_scaled=lr_is_scaled(config, batch), precision=runtime.precision,
                jit=bool(runtime.jit), replicas=replicas, workers=runtime.workers,
                device=runtime.device)


def prepare_run(config, runtime):
    """The data of a run and its `Plan`: the input size decided once, the data loaded at
    it, then the rest."""
    size = input_size(config)
    data = load_data(config, size)
    return data, make_plan(config, data, runtime, size)


MODEL_OPTIONS = ("stem", "width", "dropout", "zero_init_residual")  # TrainConfig fields


def model_options(config):
    """The model options the user set (those that differ from `TrainConfig`'s defaults):
    the model's own defaults hold for the rest, and a model that does not take an option
    refuses it (`tfresnet.models.registry`)."""
    defaults = TrainConfig()
    return {name: getattr(config, name) for name in MODEL_OPTIONS
            if getattr(config, name) != getattr(defaults, name)}


def make_network(config, num_classes, size):
    """The network from the registry, or a pretrained network with a new head running at
    ``size`` px (`input_size`; None from scratch): a tfresnet run's (`RunTransferNet`) or
    an ImageNet backbone (`TransferNet`)."""
    pretrained = config.model.endswith("_imagenet")
    if config.transfer == "none":
        if pretrained:
            raise UserError(f"{config.model} is a pretrained backbone: choose --transfer "
                            "frozen, finetune, two-stage or scratch")
        return get_model(config.model, num_classes, **model_options(config))
    frozen = config.transfer == "frozen"
    run = run_source(config.weights)
    if run is not None:
        return RunTransferNet(run.network, num_classes, image_size=size, pixels=run.pixels,
                              dropout=config.dropout, frozen_base=frozen)
    arch = config.model.removesuffix("_imagenet")
    weights = resolve_weights(arch, config.weights)
    return TransferNet(arch, num_classes, image_size=size,
                       dropout=config.dropout, frozen_base=frozen,
                       preset=preset_spec(arch, weights) if is_preset(weights) else None,
                       width=config.width)


FIRST_EPOCH_SHARE = 0.95  # of batch norm's moving statistics, due to data by epoch 1's end


def shorten_batch_norm_memory(network, steps):
    """Lowers batch norm's momentum (0.9) where ``steps`` batches an epoch would leave its
    moving statistics mostly at their initial values at the first validation: to the
    momentum whose statistics owe `FIRST_EPOCH_SHARE` to the first epoch's batches (15
    steps: 0.82; 29 steps and more keep 0.9). Pretrained statistics are left alone."""
    momentum = (1 - FIRST_EPOCH_SHARE) ** (1 / steps)
    for layer in network._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > momentum:
            layer.momentum = momentum


def make_preprocessor(network, data):
    """The `ImagePreprocessor` of a run: a pretrained network's own pixels at its own
    size (resized inside where the data differ), else the training data's mean/std;
    photos keep their evaluation crop."""
    crop = data.x_train.view.eval_crop if is_photo(data) else None
    if isinstance(network, PretrainedNet):
        return ImagePreprocessor(data.image_size, crop=crop,
                                 network_size=(network.image_size,) * 2, **network.pixels)
    return ImagePreprocessor.from_mean_std(data.image_size, data.mean, data.std, crop=crop)


def build_model(config, data, runtime, plan, pretrained=True):
    """The compiled `Classifier` of a run, built under the runtime's strategy as ``plan``
    (`make_plan`) says.

    Args:
        pretrained: load ``config.weights`` into the backbone (a resumed run loads its own
            checkpoint instead).
    """
    steps = plan.steps_per_epoch
    with runtime.strategy.scope():
        network = make_network(config, data.num_classes, plan.input_size)
        if config.sync_bn:
            for layer in network._flatten_layers():
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True  # batch statistics over every replica
        if config.transfer in ("none", "scratch"):
            shorten_batch_norm_memory(network, steps)
        model = Classifier(network, make_preprocessor(network, data), data.class_names,
                           l2=config.l2, l2_on=config.l2_on, dataset=config.dataset,
                           name=f"{config.model}_classifier")
        model.compile(
            optimizer=make_optimizer(config, steps, plan.batch_size),
            loss=cross_entropy(config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                     *[keras.metrics.TopKCategoricalAccuracy(TOP_K, name="top5")]
                     * has_top_k(data.num_classes)],
            jit_compile=runtime.jit,
            steps_per_execution=plan.steps_per_execution,
        )
        keras_fixes.sum_gradients_first(model.optimizer, runtime.strategy.num_replicas_in_sync)
        model.set_augmenter(make_augmenter(config, data) if plan.augment_on == "step"
                            else None)
        model(np.zeros((1, *data.image_size, 3), np.uint8))
        model.optimizer.build(model.trainable_variables)
    if pretrained and config.weights:
        load_pretrained(model.network, config.weights)
    return model


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
    if config.transfer == "none":
        note += ("; for a few hundred photos, fine-tune weights that know more instead: a "
                 "run of yours on a larger, varied set, offline (--transfer two-stage "
                 "--weights saved_models/RUN; CIFAR-10's gave 246 photos +18 points), or "
                 "ImageNet's (--model resnet50_imagenet --transfer finetune --weights "
                 "imagenet)")
    return note


def make_pipelines(config, data, runtime, plan, start_epoch=0, arrays=None, start_step=0):
    """``(train, validation)`` pipelines as ``plan`` says. Training batches are augmented
    here unless the model augments them in its step; validation is None without a
    validation split.

    Args:
        start_epoch: the first epoch the stream yields (resuming).
        start_step: its first step (resuming inside an epoch).
        arrays: ``(x_train, y_train, x_val, y_val)`` to use instead of the data set's own
            arrays (a tuner passes tensors made once for the whole search).
    """
    batch, steps = plan.batch_size, plan.steps_per_epoch
    x_train, y_train, x_val, y_val = arrays or (data.x_train, data.y_train, data.x_val,
                                                data.y_val)
    augmenter = make_augmenter(config, data) if plan.augment_on == "tf.data" else None
    x_train = training_images(config, x_train)  # each tuner trial's own spec

    def stream(split=None):
        return make_train_pipeline(x_train, y_train, data.num_classes, batch, augmenter,
                                   config.seed, start_epoch, split, steps, start_step)[0]

    strategy = runtime.strategy
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        train = stream()
    else:  # each input pipeline (worker) yields its replicas' parts of every global batch
        train = strategy.distribute_datasets_from_function(lambda context: stream(
            (replicas, context.num_input_pipelines, context.input_pipeline_id)))
    validation = (make_eval_pipeline(x_val, y_val, data.num_classes, batch)
                  if len(x_val) else None)
    return train, validation


class TransferStages(keras.callbacks.Callback):
    """Sets the pretrained backbone's training mode at each epoch: two-stage trains only
    the head (backbone fixed, BN in inference mode) for ``head_epochs``, then everything
    with the backbone's updates scaled by ``backbone_lr``; finetune scales them from the
    start."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def on_epoch_begin(self, epoch, logs=None):
        two_stage = self.config.transfer == "two-stage"
        head_only = two_stage and epoch < self.config.head_epochs
        multiplier = 0.0 if head_only else self.config.backbone_lr
        if self.model.backbone_lr != multiplier:
            self.model.set_backbone_lr(multiplier)
            self.model.make_train_function(force=True)
            if two_stage and epoch == self.config.head_epochs:
                print(f"epoch {epoch + 1}: unfreezing the backbone (LR x {multiplier})")


def training_callbacks(config):
    """The callbacks every run trains with: the transfer stages (when fine-tuning), batch
    norm's statistics averaged over replicas (a no-op on one device), the NaN guard and,
    with ``--ema``, Keras' swap to the averaged weights for validation."""
    stages = [TransferStages(config)] if config.transfer in ("finetune", "two-stage") else []
    ema = [keras.callbacks.SwapEMAWeights()] if config.ema else []
    return [*stages, keras_fixes.AverageBatchNormAcrossReplicas(), NanGuard(), *ema]
