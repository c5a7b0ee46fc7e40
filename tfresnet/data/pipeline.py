"""tf.data pipelines: shuffle -> batch -> augment whole batches -> prefetch.

In-memory images stay uint8; an image folder's files (`ImageFiles`) are decoded, cropped
and resized per image in the pipeline's parallel map, in a fixed order. Every augmentation
is a vectorised TensorFlow function of a whole batch and a per-step seed, so the same code
runs in the tf.data map (host) or inside the compiled train step
(``Classifier.train_augmenter``, on the accelerator), and the same seed and step always give
the same batch -- which is what makes resumed runs exact.
Normalisation is the model's first operation (`tfresnet.models.Classifier`), so it travels
with the saved model.

Augmentation specs are comma-separated names with ``:key=value`` parameters, for example
``crop:pad=4:mode=zero,flip,cutout:size=8``, or one of the `PRESETS`.
"""

import functools
import inspect
import math

import keras
import numpy as np
import tensorflow as tf

from tfresnet.compat import current
from tfresnet.data.folders import ImageFiles
from tfresnet.errors import UserError

AUGMENTATIONS = {}  # name -> batch operation (see `augmentation`)
PRESETS = {
    "none": "",
    "shift_flip": "shift,flip",  # Keras' ImageDataGenerator recipe: 0.2 shifts + mirroring
    "standard": "crop,flip",
    "strong": "crop,flip,cutout",
}
FILL_MODES = ("reflect", "zero", "nearest")
# Photos take a random-resized crop per image (`tfresnet.data.folders.View`) where small
# images take these batch operations.
PHOTO_REPLACED = ("crop", "shift")
AUGMENT_PLACES = ("auto", "host", "device")  # where augmentation runs (TrainConfig.augment_on)


def augmentation(prepare=None, stateful=False, xla=True):
    """Registers a batch augmentation under its function's name: adding one is this one
    decorated function.

    The function is ``op(images, labels, seed, **params)`` -> ``(images, labels)`` on
    float32 BHWC images and one-hot labels; its keyword defaults declare its parameters
    (a ``mode`` is one of `FILL_MODES`, every other value a non-negative number).

    Args:
        prepare: ``prepare(params, num_classes)`` -> params: fills data-dependent defaults
            and raises `UserError` for values the op cannot use.
        stateful: the function is a factory ``op(layer_seed, **params)`` returning the
            batch operation (for ops that keep state, such as a Keras layer).
        xla: False for ops that XLA cannot compile: they run in tf.data, never inside an
            XLA-compiled train step.
    """
    def register(op):
        op.prepare, op.stateful, op.xla = prepare, stateful, xla
        AUGMENTATIONS[op.__name__] = op
        return op
    return register


def _parameters(op):
    skip = 1 if op.stateful else 3
    return {name: p.default for name, p in
            list(inspect.signature(op).parameters.items())[skip:]}


def parse_augment(spec, num_classes=10):
    """Parses a preset name or spec string into ``[(name, params), ...]``.

    Raises:
        UserError: unknown augmentation or parameter, or a value out of range.
    """
    spec = PRESETS.get(current("augment", spec), spec)
    parsed = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, *assignments = item.split(":")
        if name not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {name!r}; choose from "
                            f"{', '.join(AUGMENTATIONS)} or a preset: {', '.join(PRESETS)}")
        op = AUGMENTATIONS[name]
        params = _parameters(op)
        for assignment in assignments:
            key, _, value = assignment.partition("=")
            if key not in params:
                raise UserError(f"augmentation {name!r} has no parameter {key!r}; it takes "
                                f"{', '.join(params) or 'none'}")
            params[key] = value if key == "mode" else _number(name, key, value)
        _check(name, params)
        parsed.append((name, op.prepare(params, num_classes) if op.prepare else params))
    return parsed


def xla_compatible(spec):
    """Whether XLA can compile every augmentation of a spec (checked without building any)."""
    return all(AUGMENTATIONS[name].xla for name, _ in parse_augment(spec))


def _number(name, key, value):
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"augmentation {name}:{key} needs a number. Received: {value!r}")
    return int(number) if number.is_integer() else number


def _check(name, params):
    mode = params.get("mode")
    if mode is not None and mode not in FILL_MODES:
        raise UserError(f"{name}:mode must be one of {', '.join(FILL_MODES)}. Received: {mode!r}")
    for key, value in params.items():
        if key != "mode" and value is not None and (
                not isinstance(value, (int, float)) or value < 0):
            raise UserError(f"{name}:{key} must be a non-negative number. Received: {value!r}")


def _positive_alpha(params, num_classes):
    if params["alpha"] <= 0:
        raise UserError(f"alpha must be > 0. Received: {params['alpha']}")
    return params


def _fraction_below_one(params, num_classes):
    if params["fraction"] >= 1:
        raise UserError(f"shift:fraction must be < 1. Received: {params['fraction']}")
    return params


def _cutout_size(params, num_classes):
    # 16 px for 100+ classes, else 8 (DeVries & Taylor, arXiv 1708.04552).
    if params["size"] is None:
        params["size"] = 16 if num_classes >= 100 else 8
    return params


# --- the batch operations: (images float32 BHWC, labels BK, seed [2]) -> same -------------


def _source_index(index, size, mode):
    """Maps output coordinates shifted outside ``[0, size)`` back inside, by fill mode."""
    if mode == "reflect":
        index = tf.abs(index)
        return (size - 1) - tf.abs((size - 1) - index)
    return tf.clip_by_value(index, 0, size - 1)


def translate(images, dy, dx, mode):
    """Moves each image by ``(dy[i], dx[i])`` pixels, filling the border by ``mode``."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows = tf.range(height)[None, :] - dy[:, None]
    cols = tf.range(width)[None, :] - dx[:, None]
    out = tf.gather(images, _source_index(rows, height, mode), axis=1, batch_dims=1)
    out = tf.gather(out, _source_index(cols, width, mode), axis=2, batch_dims=1)
    if mode == "zero":
        inside_rows = (rows >= 0) & (rows < height)
        inside_cols = (cols >= 0) & (cols < width)
        inside = inside_rows[:, :, None] & inside_cols[:, None, :]
        out = out * tf.cast(inside, out.dtype)[..., None]
    return out


def _offsets(batch, limit, seed):
    return tf.random.stateless_uniform([batch], seed, -limit, limit + 1, dtype=tf.int32)


@augmentation()
def crop(images, labels, seed, pad=4, mode="reflect"):
    """Pad by ``pad`` and take a random crop of the original size (a shift of at most
    ``pad`` pixels each way)."""
    batch = tf.shape(images)[0]
    dy = _offsets(batch, pad, seed)
    dx = _offsets(batch, pad, tf.random.experimental.stateless_fold_in(seed, 1))
    return translate(images, dy, dx, mode), labels


@augmentation(_fraction_below_one)
def shift(images, labels, seed, fraction=0.2, mode="nearest"):
    """Random shifts of up to ``fraction`` of the height and width (the seed's 0.2)."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    max_dy = tf.cast(tf.round(fraction * tf.cast(height, tf.float32)), tf.int32)
    max_dx = tf.cast(tf.round(fraction * tf.cast(width, tf.float32)), tf.int32)
    dy = _offsets(batch, max_dy, seed)
    dx = _offsets(batch, max_dx, tf.random.experimental.stateless_fold_in(seed, 1))
    return translate(images, dy, dx, mode), labels


@augmentation()
def flip(images, labels, seed):
    """Mirrors a random half of the images left-right."""
    mirror = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(mirror[:, None, None, None], tf.reverse(images, [2]), images), labels


def _box_mask(shape, centre_y, centre_x, box_h, box_w):
    """1.0 inside each image's box (clipped at the borders), else 0.0; ``(B, H, W, 1)``."""
    rows = tf.range(shape[1])[None, :]
    cols = tf.range(shape[2])[None, :]
    top, left = centre_y - box_h // 2, centre_x - box_w // 2
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)[..., None]


def _centres(shape, seed):
    y = tf.random.stateless_uniform([shape[0]], seed, 0, shape[1], dtype=tf.int32)
    x_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    x = tf.random.stateless_uniform([shape[0]], x_seed, 0, shape[2], dtype=tf.int32)
    return y, x


@augmentation(_cutout_size)
def cutout(images, labels, seed, size=None):
    """Zeroes one ``size`` x ``size`` square per image, centred anywhere (clipped at the
    borders)."""
    shape = tf.shape(images)
    centre_y, centre_x = _centres(shape, seed)
    box = tf.fill([shape[0]], tf.constant(int(size), tf.int32))
    return images * (1.0 - _box_mask(shape, centre_y, centre_x, box, box)), labels


GAMMA_CANDIDATES = 16  # proposals per gamma draw (see `_log_gamma`)


def _uniform(shape, seed):
    """Uniform floats in (0, 1] that eager TF and XLA draw alike. Their stateless kernels
    agree on Philox's integer bits only for seed words below 2 ** 32, and turn bits into
    floats differently; so this keeps each word's low 32 bits and converts itself."""
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF)
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32)
    return tf.cast(tf.bitwise.right_shift(bits, 8) + 1, tf.float32) * 2.0 ** -24


def _log_gamma(size, seed, alpha):
    """The logs of Gamma(alpha, 1) draws of shape ``size``, for any ``alpha > 0``, by
    Marsaglia & Tsang's method ("A simple method for generating gamma variables", ACM TOMS
    26(3), 2000), from stateless uniform draws only: XLA compiles them (it has no kernel for
    ``stateless_gamma``) and a draw is a pure function of ``seed``.

    Each draw proposes `GAMMA_CANDIDATES` candidates at once (normals by Box-Muller) and
    keeps the first one accepted. For ``alpha < 1`` it draws Gamma(alpha + 1) and boosts
    it: Gamma(alpha) = Gamma(alpha + 1) * U ** (1 / alpha), in logs so small values do not
    underflow. The shape drawn is >= 1, where a candidate is rejected with probability
    below 0.05, so all 16 are with probability below 0.05 ** 16 < 2e-21; the draw then
    takes ``v = 1`` (a gamma of ``d`` before any boost, near the mean) instead of failing.
    """
    alpha = float(alpha)
    d = (alpha + 1.0 if alpha < 1 else alpha) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    u1, u2, u3, u4 = tf.unstack(_uniform([4, *size, GAMMA_CANDIDATES], seed))
    x = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2)
    v = (1.0 + c * x) ** 3
    log_v = tf.math.log(tf.maximum(v, 1e-30))
    accepted = (v > 0) & (tf.math.log(u3) < 0.5 * x ** 2 + d - d * v + d * log_v)
    first = accepted & (tf.cumsum(tf.cast(accepted, tf.int32), axis=-1) == 1)
    log_gamma = math.log(d) + tf.reduce_sum(tf.where(first, log_v, 0.0), axis=-1)
    if alpha < 1:
        log_gamma += tf.math.log(u4[..., 0]) / alpha  # the boost's U
    return log_gamma


def _beta(seed, alpha):
    """A Beta(alpha, alpha) draw: X / (X + Y) for two Gamma(alpha) draws (XLA-compatible)."""
    log_x, log_y = tf.unstack(_log_gamma([2], seed, alpha))
    return tf.sigmoid(log_x - log_y)


@augmentation(_positive_alpha)
def mixup(images, labels, seed, alpha=0.2):
    """Blends each image and label with the batch's reversed order (Zhang et al.,
    arXiv 1710.09412), one Beta(alpha, alpha) weight per batch."""
    lam = _beta(seed, alpha)
    mixed = lam * images + (1.0 - lam) * tf.reverse(images, [0])
    return mixed, lam * labels + (1.0 - lam) * tf.reverse(labels, [0])


@augmentation(_positive_alpha)
def cutmix(images, labels, seed, alpha=1.0):
    """Pastes a box from the reversed batch into each image; labels mix by the pasted area
    (Yun et al., arXiv 1905.04899)."""
    shape = tf.shape(images)
    lam = _beta(seed, alpha)
    side = tf.sqrt(1.0 - lam)
    box_h = tf.fill([shape[0]], tf.cast(side * tf.cast(shape[1], tf.float32), tf.int32))
    box_w = tf.fill([shape[0]], tf.cast(side * tf.cast(shape[2], tf.float32), tf.int32))
    centre_y, centre_x = _centres(shape, tf.random.experimental.stateless_fold_in(seed, 2))
    mask = _box_mask(shape, centre_y, centre_x, box_h, box_w)
    pasted = images * (1.0 - mask) + tf.reverse(images, [0]) * mask
    area = tf.reduce_mean(mask, axis=[1, 2, 3])[:, None]
    return pasted, (1.0 - area) * labels + area * tf.reverse(labels, [0])


@augmentation(stateful=True, xla=False)  # ImageProjectiveTransformV3 has no XLA kernel
def randaugment(layer_seed, num_ops=2, factor=0.5):
    """Keras' RandAugment. It draws from its own seeded generator, not from the step seed,
    so it is not replayed exactly on resume."""
    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=int(num_ops),
                                     factor=factor, seed=layer_seed)
    return lambda images, labels, seed: (layer(images, training=True), labels)


class Augmenter:
    """Applies a parsed augmentation list to ``(images, one-hot labels)`` batches.

    Args:
        spec: a preset or spec string (see `parse_augment`).
        num_classes: for the size defaults.
        seed: with the step number, fixes every random choice.
        skip: names of the spec's operations to leave out.
    """

    def __init__(self, spec, num_classes, seed=0, skip=()):
        self.seed = int(seed)
        self.ops = []
        parsed = [item for item in parse_augment(spec, num_classes) if item[0] not in skip]
        for index, (name, params) in enumerate(parsed):
            op = AUGMENTATIONS[name]
            self.ops.append(op(self.seed + index, **params) if op.stateful
                            else functools.partial(op, **params))

    def __bool__(self):
        return bool(self.ops)

    def __call__(self, images, labels, step, stream=None):
        """``stream``: a replica's number, folded into the seed (None: one stream)."""
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.float32)
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        if stream is not None:
            base = tf.random.experimental.stateless_fold_in(base, tf.cast(stream, tf.int64))
        for index, op in enumerate(self.ops):
            seed = tf.random.experimental.stateless_fold_in(base, index)
            images, labels = op(images, labels, seed)
        return images, labels


# --- pipelines -------------------------------------------------------------------------


def train_steps(num_images, batch_size):
    """Steps per epoch: full batches only (a set smaller than a batch is one batch)."""
    return max(1, num_images // batch_size)


def make_train_pipeline(images, labels, num_classes, batch_size, augmenter=None, seed=0,
                        start_epoch=0, split=None, steps=None, start_step=0):
    """An endless stream of training batches, epoch after epoch from ``start_epoch``
    (from its batch ``start_step``: a run resumed inside an epoch).

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``; batch ``i`` of epoch
    ``e`` is global step ``e * steps + i``, the number its augmentation is seeded with.
    With ``augmenter=None`` batches are raw uint8 (augment later, on the device).

    Args:
        images: uint8 ``(N, H, W, 3)`` or `ImageFiles` (decoded here, in the training view:
            image ``i`` of epoch ``e`` is cropped by ``(seed, e, i)`` alone).
        split: ``(replicas, pipelines, pipeline_id)`` under tf.distribute: every global
            batch is cut into ``replicas`` equal parts, and this input pipeline (one per
            worker) yields its own ``replicas / pipelines`` parts, one per local replica.
            The union over workers is exactly the single-process global batch; a worker
            reads only its own parts' files.
        steps: batches per epoch, at most (and by default) the full batches there are.

    Returns:
        ``(dataset, steps_per_epoch)``; pass both to ``model.fit``.
    """
    if batch_size <= 0:
        raise UserError(f"batch size must be positive. Received: {batch_size}")
    count = len(images)
    batch = min(batch_size, count)
    steps = min(steps or train_steps(count, batch), train_steps(count, batch))
    replicas, pipelines, pipeline_id = split or (1, 1, 0)
    if batch % replicas:
        raise UserError(f"the global batch {batch} must divide evenly over {replicas} replicas")
    local = replicas // pipelines
    part = batch // replicas
    gather = _file_gather(images, "training", seed) if isinstance(images, ImageFiles) else (
        _array_gather(images))
    targets = tf.cast(labels, tf.int32)

    def epoch_indices(epoch):
        keys = tf.random.stateless_uniform([count], tf.stack([tf.constant(seed, tf.int64), epoch]))
        order = tf.reshape(tf.argsort(keys)[: steps * batch], [steps, pipelines, local, part])
        order = tf.reshape(order[:, pipeline_id], [steps * local, part])
        # Element k is replica (k % local) of global step (epoch * steps + k // local).
        first = epoch * steps * local
        return tf.data.Dataset.from_tensor_slices(order).enumerate(start=first)

    def load(element, index):
        x = gather(index, element // (steps * local))
        y = tf.one_hot(tf.gather(targets, index), num_classes)
        if augmenter:
            step = element // local
            if replicas > 1:
                step = step * replicas + pipeline_id * local + element % local
            return augmenter(x, y, step)
        return x, y

    dataset = tf.data.Dataset.counter(start_epoch).flat_map(epoch_indices)
    dataset = dataset.skip(start_step * local)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def _array_gather(images):
    pixels = tf.constant(images)  # no copy when given a tensor already
    return lambda index, epoch: tf.gather(pixels, index)


def _file_gather(files, view, seed=0):
    """``gather(index, epoch)`` -> the uint8 batch of files ``index``, decoded in the
    ``"training"`` or ``"evaluation"`` view by OpenCV (which releases the GIL, so the
    parallel map decodes on every core)."""
    def decode(index, epoch):
        if view == "training":
            return files.decode_training(index, seed, epoch)
        return files.decode_evaluation(index)

    def gather(index, epoch):
        images = tf.numpy_function(decode, [index, tf.cast(epoch, tf.int64)], tf.uint8,
                                   stateful=False)
        return tf.ensure_shape(images, [index.shape[0], *files.view.size, 3])
    return gather


def make_eval_pipeline(images, labels, num_classes, batch_size):
    """Batches in order, no augmentation, uint8 images (files: in their evaluation view)
    and one-hot labels."""
    if batch_size <= 0:
        raise UserError(f"batch size must be positive. Received: {batch_size}")
    gather = _file_gather(images, "evaluation") if isinstance(images, ImageFiles) else (
        _array_gather(images))
    targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    dataset = tf.data.Dataset.range(len(images)).batch(batch_size)
    dataset = dataset.map(lambda index: (gather(index, 0), tf.gather(targets, index)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def image_batches(images, batch_size):
    """uint8 NumPy batches of ``images`` (an array or `ImageFiles`) in order; files are
    decoded in parallel, at most a few batches ahead."""
    if not isinstance(images, ImageFiles):
        for start in range(0, len(images), batch_size):
            yield np.asarray(images[start:start + batch_size])
        return
    gather = _file_gather(images, "evaluation")
    dataset = tf.data.Dataset.range(len(images)).batch(batch_size)
    dataset = dataset.map(lambda index: gather(index, 0), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True).prefetch(2)
    yield from dataset.as_numpy_iterator()
