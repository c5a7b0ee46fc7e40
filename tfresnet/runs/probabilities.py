"""A saved model's class probabilities over images (one compiled call) and their top-k accuracy."""

import weakref

import numpy as np
import tensorflow as tf

from tfresnet.data.pipeline import image_batches

_COMPILED = weakref.WeakKeyDictionary()  # model -> its compiled softmax call


def compiled_softmax(model):
    """``softmax(model(x))`` as one tf.function, built once per model."""
    if model not in _COMPILED:
        _COMPILED[model] = tf.function(lambda x: tf.nn.softmax(model(x, training=False)),
                                       reduce_retracing=True)
    return _COMPILED[model]


def predict_probabilities(model, images, batch_size=256, flip=False):
    """Softmax probabilities for uint8 ``images`` (an array, or `ImageFiles` decoded as
    they stream), batch by batch; ``flip``: of the images mirrored left-right.

    Every batch, the last one padded, has the same shape, so the compiled call is traced
    once and never re-traced.
    """
    call = compiled_softmax(model)
    batch_size = max(1, min(batch_size, len(images)))
    outputs = []
    for batch in image_batches(images, batch_size):
        if flip:
            batch = batch[:, :, ::-1]
        missing = batch_size - len(batch)
        if missing:
            batch = np.concatenate([batch, np.zeros((missing, *batch.shape[1:]), batch.dtype)])
        outputs.append(call(tf.constant(batch)).numpy()[: batch_size - missing])
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def topk_accuracy(probabilities, labels, k):
    """Fraction of rows whose true label is among the ``k`` most probable classes."""
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))
