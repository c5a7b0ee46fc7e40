"""tf.data pipelines: shuffle -> batch -> augment whole batches -> prefetch.

In-memory images stay uint8; an image folder's files (`ImageFiles`) are decoded, cropped
and resized per image in the pipeline's parallel map, in a fixed order. The augmentation
(a `tfresnet.data.augment.Augmenter`) runs here, in the tf.data map, or inside the compiled
train step (`Classifier.set_augmenter`); either way the same seed and step give the same
batch. Normalisation is the model's first operation (`tfresnet.models.Classifier`), so it
travels with the saved model.
"""

import numpy as np
import tensorflow as tf

from tfresnet.data.folders import ImageFiles
from tfresnet.errors import UserError


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
