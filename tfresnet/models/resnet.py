"""The ResNet family (He et al., "Deep Residual Learning", arXiv 1512.03385) in Keras 3.

Reads top-down: conv/BN helpers -> `BasicBlock` -> `Bottleneck` -> `ResNet` -> the
factories `resnet18` ... `resnet152`. Channels-last; bias-free convolutions followed by
batch norm, and PyTorch's even padding before every stride-2 window, as in torchvision: the
parameter counts and the outputs (given the same weights) equal the reference models'.
"""

import keras
import tensorflow as tf
from keras import layers

from tfresnet.compat import current, with_added_arguments
from tfresnet.errors import UserError
from tfresnet.models.registry import register_model
from tfresnet.training.runtime import cpu_batch_norm_in_float32
from tfresnet.training.runtime import gpus as _gpus

STEMS = ("cifar", "imagenet", "biased_valid")
BLOCKS = ("basic", "bottleneck")
# "torch": k // 2 zeros on every side before a strided k x k window, as PyTorch pads;
# "same": Keras' "same", which pads (0, 1) / (2, 3) for stride 2 on even sizes. Files
# written before the option existed have no padding field and load as "same".
PADDINGS = ("torch", "same")

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
HE_NORMAL_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


ONEDNN_SAFE_CHANNELS = 16  # see `_ResidualBlock`


def _conv(filters, kernel_size, strides=1, use_bias=False, padding="same", name=None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.get(HE_NORMAL_FAN_OUT),
        name=name,
    )


def _torch_pad(kernel_size, strides, padding, name):
    """A `ZeroPadding2D` of ``kernel_size // 2`` before a strided window under "torch"
    padding; None where "same" already pads as PyTorch does (stride 1, or a 1x1 window)."""
    if padding == "torch" and strides > 1 and kernel_size > 1:
        return layers.ZeroPadding2D(kernel_size // 2, name=name)
    return None


def _strided_conv(filters, kernel_size, strides, use_bias, padding, name):
    """``(pad, conv)``: the padding layer (or None) and the conv that follows it."""
    pad = _torch_pad(kernel_size, strides, padding, f"{name}_pad")
    conv = _conv(filters, kernel_size, strides, use_bias, "valid" if pad else "same", name)
    return pad, conv


def _padded(pad, layer, x):
    """``layer`` applied after the explicit padding ``pad`` (if any)."""
    return layer(x if pad is None else pad(x))


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
    for layer in model._flatten_layers():
        if type(layer) is layers.BatchNormalization:
            layer.__class__ = BatchNormalization
    return model


def _bn(name, zero_gamma=False):
    # PyTorch's BN momentum 0.1 is Keras' 0.9; Keras' default 0.99 lags badly in short runs.
    return BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )


def check_padding(padding):
    """Raises a one-line `UserError` unless ``padding`` is one of `PADDINGS`."""
    if padding not in PADDINGS:
        raise UserError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")


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


class _ResidualBlock(layers.Layer):
    """Shared plumbing of both block types: config and the projection shortcut."""

    expansion = 1

    def __init__(self, in_channels, filters, strides=1, use_bias=False,
                 zero_init_residual=False, padding="torch", **kwargs):
        check_padding(padding)
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.filters = filters
        self.strides = strides
        self.use_bias = use_bias
        self.zero_init_residual = zero_init_residual
        self.padding = padding
        out_channels = filters * self.expansion
        self.shortcut_conv = None
        self.shortcut_bn = None
        if strides != 1 or in_channels != out_channels:
            # TensorFlow 2.21's oneDNN filter gradient of a strided 1x1 convolution
            # corrupts the heap for fewer than 16 input channels on inputs of 64 px or
            # more (ResNet-18 x0.125 at 64 px: exit 134/139; uxlfoundation/oneDNN#6035:
            # the 1x1 kernel's reduce-to-unit-stride workspace overflows when the input
            # channels are fewer than its channel block; experiments/README.md).
            # There the strided convolution is computed as the stride-1 one of every
            # ``strides``-th pixel, which it is (a 1x1 window pads nothing under "same").
            self.subsample = strides > 1 and in_channels < ONEDNN_SAFE_CHANNELS
            self.shortcut_conv = _conv(out_channels, 1, 1 if self.subsample else strides,
                                       use_bias, name="shortcut_conv")
            self.shortcut_bn = _bn("shortcut_bn")

    def shortcut(self, inputs, training):
        if self.shortcut_conv is None:
            return inputs
        if self.subsample:
            inputs = inputs[:, ::self.strides, ::self.strides, :]
        x = self.shortcut_conv(inputs)
        return self.shortcut_bn(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            in_channels=self.in_channels,
            filters=self.filters,
            strides=self.strides,
            use_bias=self.use_bias,
            zero_init_residual=self.zero_init_residual,
            padding=self.padding,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_added_arguments(config, ("padding",)))


@keras.saving.register_keras_serializable(package="tfresnet")
class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; ResNet-18/34.

    Args:
        in_channels: channels of the input.
        filters: channels of both convolutions (and of the output).
        strides: stride of the first convolution and of the shortcut.
        use_bias: add biases to the convolutions (only the seed's model does).
        zero_init_residual: start the last BN's gamma at zero, so each block starts as the
            identity (+0.2-0.3 % top-1, Goyal et al., arXiv 1706.02677).
        padding: ``"torch"`` (PyTorch's even padding before the stride-2 conv) or
            ``"same"`` (Keras' uneven "same", the padding of files written before 0.2).
    """

    expansion = 1

    def __init__(self, in_channels, filters, strides=1, use_bias=False,
                 zero_init_residual=False, padding="torch", **kwargs):
        super().__init__(in_channels, filters, strides, use_bias, zero_init_residual, padding,
                         **kwargs)
        self.pad1, self.conv1 = _strided_conv(filters, 3, strides, use_bias, padding, "conv1")
        self.bn1 = _bn("bn1")
        self.conv2 = _conv(filters, 3, 1, use_bias, name="conv2")
        self.bn2 = _bn("bn2", zero_gamma=zero_init_residual)

    def call(self, inputs, training=None):
        identity = self.shortcut(inputs, training)

        x = _padded(self.pad1, self.conv1, inputs)
        x = self.bn1(x, training=training)
        x = keras.ops.relu(x)

        x = self.conv2(x)
        x = self.bn2(x, training=training)

        return keras.ops.relu(x + identity)


@keras.saving.register_keras_serializable(package="tfresnet")
class Bottleneck(_ResidualBlock):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), stride on the 3x3 (ResNet v1.5); ResNet-50+.

    Args: as `BasicBlock`; the output has ``4 * filters`` channels.
    """

    expansion = 4

    def __init__(self, in_channels, filters, strides=1, use_bias=False,
                 zero_init_residual=False, padding="torch", **kwargs):
        super().__init__(in_channels, filters, strides, use_bias, zero_init_residual, padding,
                         **kwargs)
        self.conv1 = _conv(filters, 1, 1, use_bias, name="conv1")
        self.bn1 = _bn("bn1")
        self.pad2, self.conv2 = _strided_conv(filters, 3, strides, use_bias, padding, "conv2")
        self.bn2 = _bn("bn2")
        self.conv3 = _conv(filters * self.expansion, 1, 1, use_bias, name="conv3")
        self.bn3 = _bn("bn3", zero_gamma=zero_init_residual)

    def call(self, inputs, training=None):
        identity = self.shortcut(inputs, training)

        x = self.conv1(inputs)
        x = self.bn1(x, training=training)
        x = keras.ops.relu(x)

        x = _padded(self.pad2, self.conv2, x)
        x = self.bn2(x, training=training)
        x = keras.ops.relu(x)

        x = self.conv3(x)
        x = self.bn3(x, training=training)

        return keras.ops.relu(x + identity)


_BLOCK_CLASSES = {"basic": BasicBlock, "bottleneck": Bottleneck}


@keras.saving.register_keras_serializable(package="tfresnet")
class ResNet(ClassifierHead, keras.Model):
    """A ResNet classifier: stem -> four stages of residual blocks -> pool -> dense logits.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
        stage_blocks: number of blocks in each of the four stages, e.g. ``(2, 2, 2, 2)``.
        num_classes: size of the output (logits, no softmax).
        stem: ``"cifar"``: 3x3 stride-1 conv, no max-pool (the common CIFAR variant);
            ``"imagenet"``: 7x7 stride-2 conv + 3x3 stride-2 max-pool (torchvision);
            ``"biased_valid"``: a 3x3 "valid" conv + 2x2 stride-1 max-pool, and biases in
            every convolution (the seed homework's network, 11,224,932 parameters;
            ``"seed"`` is accepted for it).
        width: multiplier of every stage's channels (64, 128, 256, 512 at 1.0).
        zero_init_residual: zero the last BN gamma of every block.
        dropout: dropout rate before the classifier (0 = none).
        include_top: False drops pooling and classifier: the model returns its last
            feature map (``num_features`` channels), as a backbone for `TransferNet`.
        padding: ``"torch"`` pads every stride-2 window as PyTorch does (k // 2 zeros on
            each side); ``"same"`` is Keras' "same" (one fewer before than after on even
            sizes), the padding of files written before the option existed.

    Example:
        >>> model = ResNet("basic", (2, 2, 2, 2), num_classes=100, stem="cifar")
        >>> logits = model(keras.ops.zeros((1, 32, 32, 3)))
    """

    def __init__(self, block="basic", stage_blocks=(2, 2, 2, 2), num_classes=1000,
                 stem="cifar", width=1.0, zero_init_residual=False, dropout=0.0,
                 include_top=True, padding="torch", **kwargs):
        if block not in BLOCKS:
            raise UserError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
        stem = current("stem", stem)  # a .keras file of 0.1
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        check_padding(padding)
        check_positive("num_classes", num_classes, int)
        check_positive("width", width)
        check_dropout(dropout)
        super().__init__(**kwargs)
        self.block = block
        self.stage_blocks = tuple(stage_blocks)
        self.num_classes = num_classes
        self.stem = stem
        self.width = width
        self.zero_init_residual = zero_init_residual
        self.dropout = dropout
        self.include_top = include_top
        self.padding = padding

        use_bias = stem == "biased_valid"
        stem_channels = max(1, round(64 * width))
        self.stem_pad = self.stem_pool_pad = None
        if stem == "imagenet":
            self.stem_pad, self.stem_conv = _strided_conv(stem_channels, 7, 2, False, padding,
                                                          "stem_conv")
            # Zeros pad the max-pool like PyTorch's -inf: its input comes after a ReLU.
            self.stem_pool_pad = _torch_pad(3, 2, padding, "stem_pool_pad")
            self.stem_pool = layers.MaxPooling2D(
                3, 2, padding="valid" if self.stem_pool_pad else "same", name="stem_pool")
        elif stem == "biased_valid":
            self.stem_conv = _conv(stem_channels, 3, 1, True, padding="valid", name="stem_conv")
            self.stem_pool = layers.MaxPooling2D(2, 1, padding="same", name="stem_pool")
        else:
            self.stem_conv = _conv(stem_channels, 3, 1, name="stem_conv")
            self.stem_pool = None
        self.stem_bn = _bn("stem_bn")

        block_class = _BLOCK_CLASSES[block]
        in_channels = stem_channels
        self.blocks = []
        for stage, num_blocks in enumerate(self.stage_blocks):
            filters = max(1, round(64 * width * 2**stage))
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                self.blocks.append(
                    block_class(
                        in_channels,
                        filters,
                        strides,
                        use_bias=use_bias,
                        zero_init_residual=zero_init_residual,
                        padding=padding,
                        name=f"stage{stage + 1}_block{index + 1}",
                    )
                )
                in_channels = filters * block_class.expansion
        self.num_features = in_channels

        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.drop = layers.Dropout(dropout, name="dropout") if dropout and include_top else None
        # Logits in float32 even under mixed precision, for a stable softmax.
        self.fc = layers.Dense(num_classes, dtype="float32", name="fc") if include_top else None

    def feature_map(self, inputs, training=None):
        """The output of the last stage, ``(batch, h, w, num_features)``."""
        x = _padded(self.stem_pad, self.stem_conv, inputs)
        x = self.stem_bn(x, training=training)
        x = keras.ops.relu(x)
        if self.stem_pool is not None:
            x = _padded(self.stem_pool_pad, self.stem_pool, x)

        for block in self.blocks:
            x = block(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            include_top=self.include_top,
            block=self.block,
            stage_blocks=list(self.stage_blocks),
            num_classes=self.num_classes,
            stem=self.stem,
            width=self.width,
            zero_init_residual=self.zero_init_residual,
            dropout=self.dropout,
            padding=self.padding,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_added_arguments(config, ("padding",)))


def _resnet(arch, block, stage_blocks, num_classes, **kwargs):
    return ResNet(block, stage_blocks, num_classes, name=kwargs.pop("name", arch), **kwargs)


@register_model("resnet18")
def resnet18(num_classes=1000, **kwargs):
    """ResNet-18 (arXiv 1512.03385): basic blocks (2, 2, 2, 2). Options as `ResNet`."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), num_classes, **kwargs)


@register_model("resnet34")
def resnet34(num_classes=1000, **kwargs):
    """ResNet-34 (arXiv 1512.03385): basic blocks (3, 4, 6, 3). Options as `ResNet`."""
    return _resnet("resnet34", "basic", (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet50")
def resnet50(num_classes=1000, **kwargs):
    """ResNet-50 (arXiv 1512.03385): bottlenecks (3, 4, 6, 3). Options as `ResNet`."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet101")
def resnet101(num_classes=1000, **kwargs):
    """ResNet-101 (arXiv 1512.03385): bottlenecks (3, 4, 23, 3). Options as `ResNet`."""
    return _resnet("resnet101", "bottleneck", (3, 4, 23, 3), num_classes, **kwargs)


@register_model("resnet152")
def resnet152(num_classes=1000, **kwargs):
    """ResNet-152 (arXiv 1512.03385): bottlenecks (3, 8, 36, 3). Options as `ResNet`."""
    return _resnet("resnet152", "bottleneck", (3, 8, 36, 3), num_classes, **kwargs)
