"""Pretrained ResNet backbones with a new head: the transfer-learning models.

`TransferNet` resizes inside the model (32 px CIFAR images -> e.g. 160 or 224), applies the
backbone's own preprocessing, runs the backbone without its ImageNet classifier and ends in a
new dense head. Backbones: Keras Applications' ResNet50/101/152 and their V2, and the
project's own ResNet-18/34 with the ImageNet stem. ImageNet weights come from Keras' download
cache (``weights="imagenet"``) or from a local ``.weights.h5`` / ``.h5`` / ``.keras`` file.
"""

import warnings
from pathlib import Path

import keras

from tfresnet.errors import UserError
from tfresnet.models.resnet import (
    ClassifierHead,
    check_dropout,
    check_positive,
    legacy_padding,
    resnet18,
    resnet34,
)

_APPLICATIONS = {
    "resnet50": ("ResNet50", "resnet"),
    "resnet101": ("ResNet101", "resnet"),
    "resnet152": ("ResNet152", "resnet"),
    "resnet50v2": ("ResNet50V2", "resnet_v2"),
    "resnet101v2": ("ResNet101V2", "resnet_v2"),
    "resnet152v2": ("ResNet152V2", "resnet_v2"),
}
_OWN = {"resnet18": resnet18, "resnet34": resnet34}
ARCHITECTURES = tuple(_OWN) + tuple(_APPLICATIONS)
# none: no pretrained backbone; scratch: the pretrained architecture from random weights.
TRANSFER_MODES = ("none", "scratch", "frozen", "finetune", "two-stage")
MIN_IMAGE_SIZE = 32  # Keras Applications' ResNets refuse smaller inputs


def build_base(arch, image_size, padding="torch"):
    """The backbone without classifier and pooling: it returns its last feature map.
    ``padding`` applies to the project's own ResNet-18/34 (see `ResNet`)."""
    if arch in _OWN:
        return _OWN[arch](1000, stem="imagenet", include_top=False, padding=padding,
                          name=f"{arch}_base")
    constructor, _ = _APPLICATIONS[arch]
    return getattr(keras.applications, constructor)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3),
        name=f"{arch}_base")


@keras.saving.register_keras_serializable(package="tfresnet")
class TransferNet(ClassifierHead, keras.Model):
    """Resize -> the backbone's preprocessing -> pretrained backbone -> new dense head.

    Args:
        arch: one of `ARCHITECTURES`.
        num_classes: size of the new head.
        image_size: side the inputs are resized to inside the model (>= 32).
        dropout: dropout before the head.
        frozen_base: run the backbone in inference mode (BN statistics frozen). Training
            sets this for the frozen and head-only stages.
        trainable_base: False freezes the backbone's weights too (the feature extractor).
        padding: of the project's own ResNet-18/34 backbones (see `ResNet`); files written
            before the option existed load with the old ``"same"``.
    """

    def __init__(self, arch, num_classes, image_size=224, dropout=0.0, frozen_base=False,
                 trainable_base=True, padding="torch", **kwargs):
        if arch not in ARCHITECTURES:
            raise UserError(f"no pretrained variant of {arch!r}; choose one of "
                            f"{', '.join(ARCHITECTURES)}")
        check_positive("num_classes", num_classes, int)
        check_dropout(dropout)
        if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
            raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} for {arch}. "
                            f"Received: {image_size}")
        super().__init__(**kwargs)
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.dropout = dropout
        self.frozen_base = frozen_base
        self.trainable_base = trainable_base
        self.padding = padding
        self.feature_extractor = build_base(arch, image_size, padding)
        self.feature_extractor.trainable = trainable_base
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout else None
        self.fc = keras.layers.Dense(num_classes, dtype="float32", name="fc")

    @property
    def base(self):
        """The old name of `feature_extractor`. Keras stores its weights under this name
        (the first of the two in sorted order), so files of every version load."""
        return self.feature_extractor

    def preprocess(self, pixels):
        """0-255 RGB pixels -> what the backbone was trained on, by Keras' own
        ``preprocess_input``: the Applications module's, or torchvision's normalisation
        ("torch" mode) for the project's own ResNet-18/34."""
        x = keras.ops.image.resize(pixels, (self.image_size, self.image_size))
        if self.arch in _OWN:
            return keras.applications.imagenet_utils.preprocess_input(x, mode="torch")
        module = getattr(keras.applications, _APPLICATIONS[self.arch][1])
        return module.preprocess_input(x)

    def feature_map(self, inputs, training=None):
        """The backbone's last feature map (before pooling)."""
        x = self.preprocess(keras.ops.cast(inputs, "float32"))
        return self.feature_extractor(x, training=False if self.frozen_base else training)

    def get_config(self):
        config = super().get_config()
        config.update(arch=self.arch, num_classes=self.num_classes, image_size=self.image_size,
                      dropout=self.dropout, frozen_base=self.frozen_base,
                      trainable_base=self.trainable_base, padding=self.padding)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**legacy_padding(config))


def load_pretrained(model, weights):
    """Loads ImageNet weights into ``model.feature_extractor``: ``"imagenet"`` (Keras'
    download cache) or a local weights file. A file of another architecture is refused,
    never partly loaded."""
    base = model.feature_extractor
    if weights == "imagenet":
        if model.arch in _OWN:
            raise UserError(f"Keras publishes no ImageNet weights for {model.arch}; pass "
                            "--weights PATH (a .weights.h5 saved from its backbone)")
        constructor, _ = _APPLICATIONS[model.arch]
        try:
            source = getattr(keras.applications, constructor)(
                include_top=False, weights="imagenet",
                input_shape=(model.image_size, model.image_size, 3))
        except Exception as err:
            raise UserError(f"could not download ImageNet weights for {model.arch} "
                            f"({type(err).__name__}); download them elsewhere and pass "
                            "--weights PATH")
        _copy_weights(source, base, "the ImageNet download")
        return
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights file {path} does not exist")
    if path.suffix == ".keras":
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as err:
            raise UserError(f"--weights {path} is not a loadable .keras file ({err})")
        source = getattr(getattr(source, "network", source), "feature_extractor", source)
        _copy_weights(source, base, path)
        return
    if not path.name.endswith(".h5"):
        raise UserError(f"--weights must be 'imagenet', a .weights.h5, .h5 or .keras file. "
                        f"Received: {path}")
    expected = [tuple(v.shape) for v in base.weights]
    try:
        with warnings.catch_warnings():  # Keras warns per skipped layer before it raises
            warnings.simplefilter("ignore")
            base.load_weights(path)
    except Exception as err:
        reason = str(err).splitlines()[0][:200].rstrip(": ")
        raise UserError(f"--weights {path} does not fit {model.arch} ({reason})")
    if [tuple(v.shape) for v in base.weights] != expected:
        raise UserError(f"--weights {path} does not fit {model.arch}")


def _copy_weights(source, base, origin):
    values = source.get_weights()
    shapes = [tuple(v.shape) for v in base.weights]
    if [tuple(v.shape) for v in values] != shapes:
        raise UserError(f"weights from {origin} do not fit this backbone ({len(values)} "
                        f"arrays vs {len(shapes)} expected, or different shapes)")
    base.set_weights(values)
