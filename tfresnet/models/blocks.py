"""The ResNet's residual blocks and the padded convolutions and batch norm they are made of.

Bias-free convolutions followed by batch norm, and PyTorch's even padding before every
stride-2 window, as in torchvision (see `PADDINGS`).
"""

import keras
from keras import layers

from tfresnet.compat import with_added_arguments
from tfresnet.errors import UserError
from tfresnet.models.layers import HE_NORMAL_FAN_OUT, BatchNormalization

# "torch": k // 2 zeros on every side before a strided k x k window, as PyTorch pads;
# "same": Keras' "same", which pads (0, 1) / (2, 3) for stride 2 on even sizes. Files
# written before the option existed have no padding field and load as "same".
PADDINGS = ("torch", "same")
ONEDNN_SAFE_CHANNELS = 16  # see `_ResidualBlock`


def conv(filters, kernel_size, strides=1, use_bias=False, padding="same", name=None):
    """A `Conv2D` initialised as torchvision's (`HE_NORMAL_FAN_OUT`)."""
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.get(HE_NORMAL_FAN_OUT),
        name=name,
    )


def torch_pad(kernel_size, strides, padding, name):
    """A `ZeroPadding2D` of ``kernel_size // 2`` before a strided window under "torch"
    padding; None where "same" already pads as PyTorch does (stride 1, or a 1x1 window)."""
    if padding == "torch" and strides > 1 and kernel_size > 1:
        return layers.ZeroPadding2D(kernel_size // 2, name=name)
    return None


def strided_conv(filters, kernel_size, strides, use_bias, padding, name):
    """``(pad, conv)``: the padding layer (or None) and the conv that follows it."""
    pad = torch_pad(kernel_size, strides, padding, f"{name}_pad")
    return pad, conv(filters, kernel_size, strides, use_bias, "valid" if pad else "same", name)


def padded(pad, layer, x):
    """``layer`` applied after the explicit padding ``pad`` (if any)."""
    return layer(x if pad is None else pad(x))


def batch_norm(name, zero_gamma=False):
    """The fused `BatchNormalization` with PyTorch's momentum and epsilon."""
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
            self.shortcut_conv = conv(out_channels, 1, 1 if self.subsample else strides,
                                      use_bias, name="shortcut_conv")
            self.shortcut_bn = batch_norm("shortcut_bn")

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
        self.pad1, self.conv1 = strided_conv(filters, 3, strides, use_bias, padding, "conv1")
        self.bn1 = batch_norm("bn1")
        self.conv2 = conv(filters, 3, 1, use_bias, name="conv2")
        self.bn2 = batch_norm("bn2", zero_gamma=zero_init_residual)

    def call(self, inputs, training=None):
        identity = self.shortcut(inputs, training)

        x = padded(self.pad1, self.conv1, inputs)
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
        self.conv1 = conv(filters, 1, 1, use_bias, name="conv1")
        self.bn1 = batch_norm("bn1")
        self.pad2, self.conv2 = strided_conv(filters, 3, strides, use_bias, padding, "conv2")
        self.bn2 = batch_norm("bn2")
        self.conv3 = conv(filters * self.expansion, 1, 1, use_bias, name="conv3")
        self.bn3 = batch_norm("bn3", zero_gamma=zero_init_residual)

    def call(self, inputs, training=None):
        identity = self.shortcut(inputs, training)

        x = self.conv1(inputs)
        x = self.bn1(x, training=training)
        x = keras.ops.relu(x)

        x = padded(self.pad2, self.conv2, x)
        x = self.bn2(x, training=training)
        x = keras.ops.relu(x)

        x = self.conv3(x)
        x = self.bn3(x, training=training)

        return keras.ops.relu(x + identity)


BLOCK_CLASSES = {"basic": BasicBlock, "bottleneck": Bottleneck}
