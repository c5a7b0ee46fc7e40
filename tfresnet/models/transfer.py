"""Pretrained networks with a new head: the transfer-learning models and their freezing.

Both run a pretrained feature extractor without its classifier and end in a new dense head
(`PretrainedNet`). The resize to the network's size (32 px CIFAR images -> e.g. 160 or 224)
and its own pixel preprocessing (``pixels``) are the `Classifier`'s `ImagePreprocessor`'s
job. Where the weights come from decides the network: a tfresnet run
(`tfresnet.models.weights.run_source`) makes a `RunTransferNet`, the run's own network of
any registered model, stem and width, at the run's input size and with the run's pixel
scale and offset; ``"imagenet"``, a preset, a weights file or none
(`tfresnet.models.backbones`) make a `TransferNet`. `tfresnet.models.weights.load_pretrained`
fills either with its weights.
"""

import copy

import keras

from tfresnet.compat import with_added_arguments
from tfresnet.errors import UserError
from tfresnet.keras_fixes import forget_layer
from tfresnet.models.backbones import OWN_BACKBONES, PRETRAINED, build_base, pretrained
from tfresnet.models.layers import ClassifierHead, check_dropout, check_positive
from tfresnet.models.preprocessing import ImagePreprocessor

MIN_IMAGE_SIZE = 32  # Keras Applications' ResNets refuse smaller inputs


class PretrainedNet(ClassifierHead):
    """A pretrained ``feature_extractor`` -> a new head (``pool``, ``drop``, ``fc``): what
    fine-tuning needs of a network (`set_frozen`; `TrainingSteps.set_backbone_lr`) and
    what its `ImagePreprocessor` is made of (``image_size``, the side it runs at, and
    ``pixels``)."""

    def set_frozen(self, frozen):
        """The one freezing setting of the backbone, saved with the model: frozen, its
        weights stay fixed and its batch norm runs in inference mode."""
        self.feature_extractor.trainable = not frozen

    @property
    def frozen_base(self):
        return not self.feature_extractor.trainable

    def feature_map(self, inputs, training=None):
        """The backbone's last feature map (before pooling)."""
        return self.feature_extractor(inputs,
                                      training=False if self.frozen_base else training)


@keras.saving.register_keras_serializable(package="tfresnet")
class TransferNet(PretrainedNet, keras.Model):
    """A pretrained backbone (headless) -> a new dense head.

    Its inputs are the backbone's own: ``image_size`` square, preprocessed as `pixels`
    says, which a `Classifier`'s `ImagePreprocessor` does (resize included).

    Args:
        arch: one of `ARCHITECTURES`.
        num_classes: size of the new head.
        image_size: side the backbone runs at (>= 32).
        dropout: dropout before the head.
        frozen_base: freeze the backbone: its weights fixed, its batch norm in inference
            mode (`set_frozen`, which training calls for the frozen and head-only stages).
        trainable_base: False freezes it too (files of 0.3 and before hold both; either
            freezes).
        padding: of the project's own ResNet-18/34 backbones (see `ResNet`); files written
            before the option existed load with the old ``"same"``.
        preset: a `preset_spec`: keras-hub's backbone and the preset's pixel transform.
        width: channel multiplier of the project's own ResNet-18/34 backbones (to transfer
            from a narrow network pretrained with tfresnet).
        takes_pixels: the network resizes and preprocesses 0-255 pixels itself, as files
            written before 0.4 (whose `Classifier` only normalised with mean 0, std 1) do.
    """

    def __init__(self, arch, num_classes, image_size=224, dropout=0.0, frozen_base=False,
                 trainable_base=True, padding="torch", preset=None, width=1.0,
                 takes_pixels=False, **kwargs):
        pretrained(arch)
        check_positive("num_classes", num_classes, int)
        check_dropout(dropout)
        check_positive("width", width)
        if width != 1.0 and (arch not in OWN_BACKBONES or preset is not None):
            raise UserError(f"--width applies to the resnet18/resnet34 backbones built by "
                            f"tfresnet, not to {arch} from Keras Applications or a preset")
        if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
            raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} for {arch}. "
                            f"Received: {image_size}")
        super().__init__(**kwargs)
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.dropout = dropout
        self.padding = padding
        self.preset = preset
        self.width = width
        self.takes_pixels = takes_pixels
        self.own_preprocessor = ImagePreprocessor(
            (image_size, image_size), network_size=(image_size, image_size),
            **self.pixels) if takes_pixels else None
        self.feature_extractor = build_base(arch, image_size, padding, preset, width)
        self.set_frozen(frozen_base or not trainable_base)
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout else None
        self.fc = keras.layers.Dense(num_classes, dtype="float32", name="fc")

    @property
    def trainable_base(self):
        return self.feature_extractor.trainable

    @property
    def base(self):
        """The old name of `feature_extractor`. Keras stores its weights under this name
        (the first of the two in sorted order), so files of every version load."""
        return self.feature_extractor

    @property
    def pixels(self):
        """The pixels the backbone was trained on, as `ImagePreprocessor` arguments: a
        preset's own scale and offset, else its architecture's (`PRETRAINED`)."""
        if self.preset is not None:
            return {"scale": self.preset["scale"], "offset": self.preset["offset"]}
        return PRETRAINED[self.arch].pixels

    def feature_map(self, inputs, training=None):
        if self.own_preprocessor is not None:
            inputs = self.own_preprocessor(inputs)
        return super().feature_map(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(arch=self.arch, num_classes=self.num_classes, image_size=self.image_size,
                      dropout=self.dropout, frozen_base=self.frozen_base,
                      trainable_base=self.trainable_base, padding=self.padding,
                      preset=self.preset, width=self.width, takes_pixels=self.takes_pixels)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_added_arguments(config, ("padding", "takes_pixels")))


@keras.saving.register_keras_serializable(package="tfresnet")
class RunTransferNet(PretrainedNet, keras.Model):
    """A tfresnet run's network without its classifier -> a new dense head.

    Args:
        source: the run's network as a Keras config (`RunSource.network`), rebuilt here
            without its dense classifier; `load_pretrained` copies the run's weights.
        num_classes: size of the new head.
        image_size: side the network runs at (the run's own unless ``--image-size``).
        pixels: the run's `ImagePreprocessor` scale, offset and channel order.
        dropout: dropout before the head.
        frozen_base: freeze the run's network (`set_frozen`).
    """

    def __init__(self, source, num_classes, image_size, pixels, dropout=0.0,
                 frozen_base=False, **kwargs):
        check_positive("num_classes", num_classes, int)
        check_dropout(dropout)
        super().__init__(**kwargs)
        self.source = source
        self.num_classes = num_classes
        self.image_size = image_size
        self.pixels = pixels
        self.dropout = dropout
        network = keras.saving.deserialize_keras_object(copy.deepcopy(source))
        # The run's own pooling (the small CNN flattens), then the new classifier.
        self.pool = keras.layers.deserialize(keras.layers.serialize(network.pool))
        self.feature_extractor = _headless(network)
        self.set_frozen(frozen_base)
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout else None
        self.fc = keras.layers.Dense(num_classes, dtype="float32", name="fc")

    def get_config(self):
        config = super().get_config()
        config.update(source=self.source, num_classes=self.num_classes,
                      image_size=self.image_size, pixels=self.pixels, dropout=self.dropout,
                      frozen_base=self.frozen_base)
        return config


HEAD_LAYERS = ("pool", "drop", "fc")  # of a `ClassifierHead`


def _headless(network):
    """A registry network (`ClassifierHead`) without its head: called, it returns its last
    feature map. Keras forgets the head's layers, so they are never built, trained or
    saved."""
    for name in HEAD_LAYERS:
        forget_layer(network, name)
    return network
