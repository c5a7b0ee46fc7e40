"""The seeds' comparison models: VGG16 with batch norm (CIFAR head) and seed 001's small CNN."""

import keras
from keras import layers

from tfresnet.models.layers import (
    HE_NORMAL_FAN_OUT,
    BatchNormalization,
    ClassifierHead,
    check_dropout,
    check_positive,
)
from tfresnet.models.registry import register_model

# Simonyan & Zisserman, arXiv 1409.1556, configuration D; "M" is a 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")


@keras.saving.register_keras_serializable(package="tfresnet")
class VGG(ClassifierHead, keras.Model):
    """VGG with batch norm after every 3x3 conv and a single dense CIFAR head.

    The ImageNet VGG's three 4096-wide dense layers are replaced by global average
    pooling + one dense layer, the usual CIFAR variant (at 32 px the features are 1x1).

    Args:
        layout: channels per conv layer, ``"M"`` for max-pool.
        num_classes: size of the logits.
        width: channel multiplier.
        dropout: dropout rate before the classifier.
    """

    def __init__(self, layout=VGG16_LAYOUT, num_classes=10, width=1.0, dropout=0.0, **kwargs):
        check_positive("num_classes", num_classes, int)
        check_positive("width", width)
        check_dropout(dropout)
        super().__init__(**kwargs)
        self.layout = tuple(layout)
        self.num_classes = num_classes
        self.width = width
        self.dropout = dropout
        self.features_layers = []
        for index, item in enumerate(self.layout):
            if item == "M":
                self.features_layers.append(layers.MaxPooling2D(2, name=f"pool{index}"))
                continue
            self.features_layers += [
                layers.Conv2D(max(1, round(item * width)), 3, padding="same", use_bias=False,
                              kernel_initializer=keras.initializers.get(HE_NORMAL_FAN_OUT),
                              name=f"conv{index}"),
                BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{index}"),
                layers.ReLU(name=f"relu{index}"),
            ]
        self.pool = layers.GlobalAveragePooling2D(name="gap")
        self.drop = layers.Dropout(dropout, name="dropout") if dropout else None
        self.fc = layers.Dense(num_classes, dtype="float32", name="fc")

    def feature_map(self, inputs, training=None):
        """The output of the last convolutional block (after its max-pool)."""
        x = inputs
        for layer in self.features_layers:
            x = layer(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(layout=list(self.layout), num_classes=self.num_classes,
                      width=self.width, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="tfresnet")
class SmallCNN(ClassifierHead, keras.Model):
    """Seed 001's small CNN: two (5x5 conv, ReLU, 2x2 max-pool) blocks of 16 and 32
    channels, flattened into one dense layer.

    Args:
        num_classes: size of the logits.
        width: channel multiplier.
    """

    def __init__(self, num_classes=10, width=1.0, **kwargs):
        check_positive("num_classes", num_classes, int)
        check_positive("width", width)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.width = width
        self.conv1 = layers.Conv2D(max(1, round(16 * width)), 5, padding="same",
                                   activation="relu", name="conv1")
        self.pool1 = layers.MaxPooling2D(2, name="pool1")
        self.conv2 = layers.Conv2D(max(1, round(32 * width)), 5, padding="same",
                                   activation="relu", name="conv2")
        self.pool2 = layers.MaxPooling2D(2, name="pool2")
        self.pool = layers.Flatten(name="flatten")  # the head flattens, it does not pool
        self.drop = None
        self.fc = layers.Dense(num_classes, dtype="float32", name="fc")

    def feature_map(self, inputs, training=None):
        """The output of the second conv block (after its max-pool)."""
        x = self.pool1(self.conv1(inputs))
        return self.pool2(self.conv2(x))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, width=self.width)
        return config


@register_model("vgg16")
def vgg16(num_classes=10, **kwargs):
    """VGG-16 with batch norm and a CIFAR head (arXiv 1409.1556). Options as `VGG`."""
    return VGG(VGG16_LAYOUT, num_classes, name=kwargs.pop("name", "vgg16"), **kwargs)


@register_model("small_cnn")
def small_cnn(num_classes=10, **kwargs):
    """The small CNN of seed 001. Options as `SmallCNN`."""
    return SmallCNN(num_classes, name=kwargs.pop("name", "small_cnn"), **kwargs)
