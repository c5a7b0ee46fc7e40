"""The batch augmentations (crop, shift, flip, cutout, mixup, cutmix, RandAugment).

Each is ``op(images, labels, seed, **params)`` on float32 BHWC images, one-hot labels and a
``[2]`` seed, registered by `tfresnet.data.augment.augmentation`; `tfresnet.data` imports
this module, so they are registered before any spec is parsed. Mixup and cutmix draw
their Beta weights from a gamma sampler that XLA compiles (`_log_gamma`).
"""

import math

import keras
import tensorflow as tf

from tfresnet.data.augment import augmentation
from tfresnet.errors import UserError


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

