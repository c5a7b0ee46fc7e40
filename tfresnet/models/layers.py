"""Layers the networks share: the fused batch norm, the head contract, argument checks.

`BatchNormalization` runs Keras' batch norm through TensorFlow's fused kernel (in float32
where oneDNN's bfloat16 one is slow on a CPU); `fuse_batch_norm` swaps it into foreign Keras
backbones; `ClassifierHead` is the ``call`` every registered network shares.
"""

import keras
import tensorflow as tf
from keras import layers

from tfresnet.errors import UserError
from tfresnet.keras_fixes import every_layer
from tfresnet.runtime.devices import gpus as _gpus
from tfresnet.runtime.precision import cpu_batch_norm_in_float32

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
HE_NORMAL_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


# The fewest channels at which oneDNN's bfloat16 batch norm is not the slow path on a CPU
# without AMX: with 8 (ResNet-18 x0.125's first stage) a step ran at half the speed of the
# float32 casts; from 16 on it ran level with them or faster (experiments/README.md).
NATIVE_MIN_CHANNELS = 16


@keras.saving.register_keras_serializable(package="tfresnet")
class BatchNormalization(layers.BatchNormalization):
    """Keras' batch norm, run through TensorFlow's fused kernel.

    Keras 3 builds batch norm from separate ops (mean, squared difference, scale, shift;
    their gradients likewise); ``FusedBatchNormV3`` is one kernel each way (oneDNN's on a
    CPU, cuDNN's on a GPU, and XLA lowers it). Same variables, same moving statistics (the
    fused kernel's Bessel-corrected batch variance is turned back into Keras' biased one),
    same outputs: only the speed differs. Masks and renorm keep Keras' path; synchronised
    statistics (``--sync-bn``) are computed in two passes (`_synchronized_call`). It keeps
    Keras' class name because a .keras file stores the weights of a list's layers under the
    snake-cased class name.
    """

    def call(self, inputs, training=None, mask=None):
        if not (mask is None and self.scale and self.center and not self.renorm
                and len(inputs.shape) == 4 and self.axis in (-1, 3)):
            return super().call(inputs, training=training, mask=mask)
        if self.synchronized and training and self.trainable:
            return self._synchronized_call(inputs)
        if inputs.dtype not in (tf.float16, tf.bfloat16, tf.float32) or (
                inputs.dtype == tf.bfloat16 and not _gpus()
                and (cpu_batch_norm_in_float32() or inputs.shape[-1] < NATIVE_MIN_CHANNELS)):
            # oneDNN's bfloat16 batch norm ran 5x slower than its float32 one on a CPU
            # with AMX, and slower with few channels on others (experiments/README.md,
            # "bfloat16 on a CPU"): there, normalise in float32.
            inputs = tf.cast(inputs, tf.float32)
        batch_statistics = bool(training) and self.trainable
        # The raw op: tf.nn's wrapper raises epsilon to 1.001e-5.
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.constant([], tf.float32) if batch_statistics else self.moving_mean,
            variance=tf.constant([], tf.float32) if batch_statistics else self.moving_variance,
            epsilon=self.epsilon, is_training=batch_statistics)
        if batch_statistics:
            # Values per channel, counted in float: an int32 size overflows past 2**31.
            count = tf.reduce_prod(tf.cast(tf.shape(inputs)[:-1], tf.float32))
            variance *= (count - 1.0) / count
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)

    def _synchronized_call(self, inputs):
        """Batch statistics of every replica's batch together (``--sync-bn``), in float32
        and in two passes: the mean first, then the squared deviations from it. Keras
        computes them in one, as E[x^2] - E[x]^2 (``_compute_moments_sync`` in
        ``keras/src/backend/tensorflow/nn.py``), which loses float32's precision where a
        channel's mean is large against its spread (at mean 30 and spread 0.1, outputs off
        by 0.5; ``test_models.py::test_synchronized_batch_norm_is_the_fused_one_on_one_device``)."""
        x = tf.cast(inputs, tf.float32)
        context = tf.distribute.get_replica_context()
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        total, count = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                          [tf.reduce_sum(x, [0, 1, 2]), count])
        mean = total / count
        variance = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                      tf.reduce_sum(tf.square(x - mean), [0, 1, 2])) / count
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum
                                + tf.stop_gradient(mean) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + tf.stop_gradient(variance) * (1.0 - momentum))
        outputs = tf.nn.batch_normalization(x, mean, variance, tf.cast(self.beta, tf.float32),
                                            tf.cast(self.gamma, tf.float32), self.epsilon)
        return tf.cast(outputs, self.compute_dtype)


def fuse_batch_norm(model):
    """Runs every Keras batch norm layer of ``model`` (a Keras Applications or keras-hub
    backbone) through `BatchNormalization`'s fused kernel, in place: same variables,
    outputs and class name, only the call differs. ResNet-50 fine-tuning at 224 px went
    from 5.7 to 7.2 img/s in float32 and from 7.8 to 11.0 in bfloat16 (experiments/README,
    "Fused batch norm in the pretrained backbones"). Returns ``model``."""
    for layer in every_layer(model):
        if type(layer) is layers.BatchNormalization:
            layer.__class__ = BatchNormalization
    return model




def check_positive(name, value, kind=float):
    """Raises a one-line `UserError` unless ``value`` is a positive ``kind``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{name} must be a positive {kind.__name__}. Received: {name}={value!r}")
    if kind is int and int(value) != value:
        raise UserError(f"{name} must be a positive int. Received: {name}={value!r}")


def check_dropout(dropout):
    """Raises a one-line `UserError` unless ``0 <= dropout < 1``."""
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1). Received: dropout={dropout}")


class ClassifierHead:
    """The ``call`` shared by the registry's networks, in two halves that Grad-CAM splits:
    ``feature_map`` (the output of the last convolutional stage, ``(batch, h, w, c)``) ->
    ``head``: ``pool`` -> dropout (``drop``, may be None) -> dense logits (``fc``). Without
    ``fc`` (a backbone) the call returns the feature map."""

    def features(self, inputs, training=None):
        """The pooled penultimate features, ``(batch, num_features)``."""
        return self.pool(self.feature_map(inputs, training=training))

    def head(self, feature_map, training=None):
        """Logits from the last feature map."""
        x = self.pool(feature_map)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return self.fc(x)

    def call(self, inputs, training=None):
        feature_map = self.feature_map(inputs, training=training)
        return feature_map if self.fc is None else self.head(feature_map, training=training)
