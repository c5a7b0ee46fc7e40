"""The ResNet family (He et al., "Deep Residual Learning", arXiv 1512.03385) in Keras 3.

Reads top-down: `ResNet` (stem -> four stages of `tfresnet.models.blocks` -> head) -> the
factories `resnet18` ... `resnet152`. Channels-last, as in torchvision: the parameter counts
and the outputs (given the same weights) equal the reference models'.
"""

import keras
from keras import layers

from tfresnet.compat import current, with_added_arguments
from tfresnet.errors import UserError
from tfresnet.models.blocks import (
    BLOCK_CLASSES,
    batch_norm,
    check_padding,
    conv,
    padded,
    strided_conv,
    torch_pad,
)
from tfresnet.models.layers import ClassifierHead, check_dropout, check_positive
from tfresnet.models.registry import register_model

STEMS = ("cifar", "imagenet", "biased_valid")


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
        if block not in BLOCK_CLASSES:
            raise UserError(f"unknown block {block!r}; choose one of {', '.join(BLOCK_CLASSES)}")
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
            self.stem_pad, self.stem_conv = strided_conv(stem_channels, 7, 2, False, padding,
                                                         "stem_conv")
            # Zeros pad the max-pool like PyTorch's -inf: its input comes after a ReLU.
            self.stem_pool_pad = torch_pad(3, 2, padding, "stem_pool_pad")
            self.stem_pool = layers.MaxPooling2D(
                3, 2, padding="valid" if self.stem_pool_pad else "same", name="stem_pool")
        elif stem == "biased_valid":
            self.stem_conv = conv(stem_channels, 3, 1, True, padding="valid", name="stem_conv")
            self.stem_pool = layers.MaxPooling2D(2, 1, padding="same", name="stem_pool")
        else:
            self.stem_conv = conv(stem_channels, 3, 1, name="stem_conv")
            self.stem_pool = None
        self.stem_bn = batch_norm("stem_bn")

        block_class = BLOCK_CLASSES[block]
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
        x = padded(self.stem_pad, self.stem_conv, inputs)
        x = self.stem_bn(x, training=training)
        x = keras.ops.relu(x)
        if self.stem_pool is not None:
            x = padded(self.stem_pool_pad, self.stem_pool, x)

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
