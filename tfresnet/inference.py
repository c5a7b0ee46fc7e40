"""The fast inference path (one compiled function, fixed batch shape) and the metrics."""

import weakref

import numpy as np
import tensorflow as tf

_COMPILED = weakref.WeakKeyDictionary()  # model -> its compiled softmax call


def compiled_softmax(model):
    """``softmax(model(x))`` as one tf.function, built once per model."""
    if model not in _COMPILED:
        _COMPILED[model] = tf.function(lambda x: tf.nn.softmax(model(x, training=False)))
    return _COMPILED[model]


def predict_probabilities(model, images, batch_size=256):
    """Softmax probabilities for uint8 ``images``, batch by batch.

    Every batch, the last one padded, has the same shape, so the compiled call is traced
    once and never re-traced.
    """
    call = compiled_softmax(model)
    batch_size = max(1, min(batch_size, len(images)))
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
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


def coarse_accuracy(probabilities, labels, fine_to_coarse):
    """Fraction whose predicted class lies in the true class's superclass (CIFAR-100)."""
    predicted = fine_to_coarse[np.argmax(probabilities, axis=1)]
    return float(np.mean(predicted == fine_to_coarse[np.asarray(labels)]))


def test_metrics(model, images, labels, fine_to_coarse=None, batch_size=256):
    """Top-1, top-5 and (for CIFAR-100) coarse accuracy of ``model`` on a labelled set."""
    probabilities = predict_probabilities(model, images, batch_size)
    metrics = {"test_accuracy": topk_accuracy(probabilities, labels, 1),
               "test_top5": topk_accuracy(probabilities, labels, 5)}
    if fine_to_coarse is not None:
        metrics["test_coarse_accuracy"] = coarse_accuracy(probabilities, labels, fine_to_coarse)
    return metrics
