"""Pretrained networks with a new head: the transfer-learning models.

Both run a pretrained feature extractor without its classifier and end in a new dense head
(`PretrainedNet`). The resize to the network's size (32 px CIFAR images -> e.g. 160 or 224)
and its own pixel preprocessing (``pixels``) are the `Classifier`'s `ImagePreprocessor`'s
job. Where the weights come from decides the network:

- a tfresnet run (its folder, or a ``.keras`` file holding a `Classifier`, `run_source`):
  `RunTransferNet`, the run's own network of any registered model, stem and width, at the
  run's input size and with the run's pixel scale and offset;
- a keras-hub preset (name, ``hf://`` / ``kaggle://`` handle, or a local preset directory)
  or a local timm checkpoint directory (config.json + model.safetensors): keras-hub's
  ``ResNetBackbone`` as the preset describes it, with the preset's pixel scale and offset;
- ``"imagenet"``: keras-hub's ImageNet ResNet-18 and timm's ResNet-34, Keras Applications'
  download for the ResNet-50/101/152 and V2 variants (`PRETRAINED`, one record each);
- a local ``.weights.h5`` / ``.h5`` file, a ``.keras`` file of a bare network, or none
  (``--transfer scratch``): Keras Applications' ResNets or the project's own ResNet-18/34
  with the ImageNet stem.

The last three make a `TransferNet`.
"""

import copy
import dataclasses
import functools
import json
import warnings
import zipfile
from pathlib import Path

import keras

from tfresnet.compat import with_added_arguments
from tfresnet.errors import UserError, missing_extra, require
from tfresnet.models.preprocessing import ImagePreprocessor
from tfresnet.models.registry import list_models
from tfresnet.models.resnet import (
    ClassifierHead,
    check_dropout,
    check_positive,
    fuse_batch_norm,
    resnet18,
    resnet34,
)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One pretrained ResNet architecture: how it is built, where ``--weights imagenet``
    comes from and which pixels it was trained on.

    Args:
        layout: keras-hub ``ResNetBackbone``'s (block type, blocks per stage,
            pre-activation), which a preset or timm checkpoint must match.
        application: the Keras Applications constructor; None: tfresnet's own ResNet.
        imagenet: the preset ``--weights imagenet`` loads; None: Keras Applications'
            download.
        pixels: ``ImagePreprocessor`` arguments (scale, offset, channel order) on 0-255 RGB.
        input_size: the side its ImageNet weights were trained at (the default
            ``--image-size`` of a transfer run).
    """

    layout: tuple
    application: str | None = None
    imagenet: str | None = None
    pixels: dict = dataclasses.field(default_factory=dict)
    input_size: int = 224


# torchvision's ImageNet normalisation as a scale and offset on 0-255 pixels (tfresnet's
# own ResNets, and presets saved without an image converter).
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_SCALE = [1 / (255 * s) for s in _STD]
IMAGENET_OFFSET = [-m / s for m, s in zip(_MEAN, _STD)]
_TORCH = {"scale": IMAGENET_SCALE, "offset": IMAGENET_OFFSET}
# Keras Applications' ``preprocess_input``: "caffe" (BGR, ImageNet mean) and "tf" (-1..1).
_CAFFE = {"scale": 1.0, "offset": [-103.939, -116.779, -123.68], "channel_order": "bgr"}
_TF = {"scale": 1 / 127.5, "offset": -1.0}
_BASIC, _BOTTLENECK = "basic_block", "bottleneck_block"
# keras-hub's ImageNet ResNet-18 (converted from timm's resnet18.a1_in1k) and timm's
# ResNet-34 (keras-hub has no plain 34); ResNet-D (``resnet_vd_*``) presets are other
# networks.
PRETRAINED = {
    "resnet18": Pretrained((_BASIC, [2, 2, 2, 2], False), imagenet="resnet_18_imagenet",
                           pixels=_TORCH),
    "resnet34": Pretrained((_BASIC, [3, 4, 6, 3], False),
                           imagenet="hf://timm/resnet34.a1_in1k", pixels=_TORCH),
    "resnet50": Pretrained((_BOTTLENECK, [3, 4, 6, 3], False), "ResNet50", pixels=_CAFFE),
    "resnet101": Pretrained((_BOTTLENECK, [3, 4, 23, 3], False), "ResNet101",
                            pixels=_CAFFE),
    "resnet152": Pretrained((_BOTTLENECK, [3, 8, 36, 3], False), "ResNet152",
                            pixels=_CAFFE),
    "resnet50v2": Pretrained((_BOTTLENECK, [3, 4, 6, 3], True), "ResNet50V2", pixels=_TF),
    "resnet101v2": Pretrained((_BOTTLENECK, [3, 4, 23, 3], True), "ResNet101V2",
                              pixels=_TF),
    "resnet152v2": Pretrained((_BOTTLENECK, [3, 8, 36, 3], True), "ResNet152V2",
                              pixels=_TF),
}
_OWN = {"resnet18": resnet18, "resnet34": resnet34}
ARCHITECTURES = tuple(PRETRAINED)
# none: no pretrained backbone; scratch: the pretrained architecture from random weights.
TRANSFER_MODES = ("none", "scratch", "frozen", "finetune", "two-stage")
MIN_IMAGE_SIZE = 32  # Keras Applications' ResNets refuse smaller inputs


def pretrained(arch):
    """The `Pretrained` record of ``arch``; a one-line `UserError` for any other name."""
    if arch not in PRETRAINED:
        raise UserError(f"no pretrained variant of {arch!r}; choose one of "
                        f"{', '.join(ARCHITECTURES)}")
    return PRETRAINED[arch]


def is_preset(weights):
    """Whether ``--weights`` names a keras-hub preset or timm checkpoint rather than
    "imagenet" or a weights file: a handle, a directory or a bare preset name."""
    if weights is None or weights == "imagenet":
        return False
    if "://" in weights:
        return True
    path = Path(weights)
    return path.is_dir() or (not path.suffix and len(path.parts) == 1 and not path.exists())


def resolve_weights(arch, weights):
    """``--weights`` with "imagenet" replaced by the preset it means for ``arch``."""
    if weights == "imagenet" and pretrained(arch).imagenet:
        return pretrained(arch).imagenet
    return weights


def backbone_input_size(arch, weights=None):
    """The input side a pretrained backbone expects: a local preset's image converter
    size, a tfresnet ``.keras`` transfer model's input size, else its architecture's
    (`Pretrained.input_size`)."""
    weights = resolve_weights(arch, weights)
    if str(weights).endswith(".keras") and Path(weights).is_file():
        return _keras_file_input_size(weights) or pretrained(arch).input_size
    if is_preset(weights) and Path(weights).is_dir():
        try:
            import keras_hub

            size = keras_hub.layers.ImageConverter.from_preset(weights).image_size
        except Exception:  # no converter (or no keras-hub): the preset says nothing
            size = None
        if size:
            return int(size[0])
    return pretrained(arch).input_size


def _keras_file_input_size(path):
    """The ``image_size`` of the `TransferNet` inside a ``.keras`` file, or None."""
    def find(node):
        if isinstance(node, dict):
            if node.get("class_name") == "TransferNet":
                return node.get("config", {}).get("image_size")
            return next(filter(None, map(find, node.values())), None)
        if isinstance(node, list):
            return next(filter(None, map(find, node)), None)
        return None

    return find(_keras_config(path))


def _keras_config(path):
    """The model config stored in a ``.keras`` file, or None when it is no Keras archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


RUN_MODEL = "best.keras"  # what a run folder given as --weights stands for (`RunFolder.BEST`)
BACKBONE_FILES = ("ResNet", "TransferNet")  # .keras files of a bare network: weights only


@dataclasses.dataclass(frozen=True)
class RunSource:
    """A tfresnet run to fine-tune from (`run_source`): what the new run takes from it.

    Args:
        path: its ``.keras`` file.
        model: the registry name of its network (``resnet18``, ``vgg16``,
            ``resnet50_imagenet``, ...).
        options: the network's ``stem`` and ``width``, those it has.
        image_size: the side the network ran at.
        pixels: its `ImagePreprocessor`'s scale, offset and channel order.
        network: the network's Keras config, head included (`RunTransferNet` drops it).
    """

    path: Path
    model: str
    options: dict
    image_size: int
    pixels: dict
    network: dict


def run_source(weights):
    """The `RunSource` of ``--weights`` when it is a tfresnet run: a run folder (its
    best.keras) or a ``.keras`` file holding a `Classifier`; None for anything else
    (``imagenet``, a preset, a weights file, a missing path, a bare ResNet's ``.keras``).

    Raises:
        UserError: a ``.keras`` file that is neither, or one that does not load.
    """
    if not weights or weights == "imagenet" or "://" in weights:
        return None
    path = Path(weights)
    if (path / RUN_MODEL).is_file():
        path = path / RUN_MODEL
    if path.suffix != ".keras" or not path.is_file():
        return None
    config = _keras_config(path)
    if config is None:
        raise UserError(f"--weights {weights} is not a Keras archive (truncated or another "
                        "format); pass a run folder or its best.keras")
    if config.get("class_name") in BACKBONE_FILES:
        return None
    if config.get("class_name") != "Classifier":
        raise UserError(f"--weights {weights} holds a {config.get('class_name')}, not a model "
                        "trained by tfresnet.train; pass a run folder or its best.keras")
    return _read_run(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_run(path, modified):
    """The `RunSource` of the run model at ``path``, read once per version of the file
    (``modified``): checks and assembly ask again, and loading draws random numbers."""
    try:
        classifier = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad archive
        raise UserError(f"--weights {path} could not be loaded as a tfresnet model "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160]})")
    network, preprocessor = classifier.network, classifier.preprocessor
    model, options = _registered(network, path)
    config = keras.saving.serialize_keras_object(network)
    config.pop("build_config", None)  # built by the new run's first call, headless
    config["config"].pop("dtype", None)  # the new run's precision policy decides
    return RunSource(Path(path), model, options,
                     int((preprocessor.network_size or preprocessor.input_size)[0]),
                     {"scale": preprocessor.scale, "offset": preprocessor.offset,
                      "channel_order": preprocessor.channel_order}, config)


def _registered(network, path):
    """``(registry name, {stem, width})`` of a run's network."""
    if isinstance(network, RunTransferNet):
        return _registered(network.feature_extractor, path)
    if isinstance(network, TransferNet):
        return f"{network.arch}_imagenet", {"stem": "imagenet", "width": network.width}
    if network.name not in list_models():
        raise UserError(f"--weights {path} holds a {type(network).__name__} named "
                        f"{network.name!r}, which is no registered model")
    return network.name, {name: getattr(network, name) for name in ("stem", "width")
                          if hasattr(network, name)}


def _load_preset(arch, preset, load_weights):
    """keras-hub's `ResNetBackbone` from ``preset``; any failure is one `UserError` line."""
    keras_hub = require("keras_hub", "pretrained")
    try:
        return keras_hub.models.ResNetBackbone.from_preset(preset, load_weights=load_weights)
    except ImportError as err:
        raise missing_extra(err.name or "safetensors", "pretrained")
    except Exception as err:
        reason = str(err).splitlines()[0][:100].rstrip(": .")
        if Path(preset).is_dir():
            raise UserError(f"--weights {preset} is not a keras-hub ResNet preset or a timm "
                            f"ResNet checkpoint directory ({type(err).__name__}: {reason})")
        raise UserError(
            f"could not load --weights {preset} ({type(err).__name__}: {reason}); download it "
            "once on a connected machine with python -c \"import keras_hub; keras_hub.models."
            f"ResNetBackbone.from_preset('{preset}').save_to_preset('{arch}_preset')\" and "
            f"pass --weights {arch}_preset (the directory)")


def _pixel_transform(preset):
    """The preset's image converter as ``(scale, offset)`` per channel on 0-255 pixels;
    torchvision's ImageNet normalisation when the preset has no converter."""
    keras_hub = require("keras_hub", "pretrained")
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):
        print(f"note: --weights {preset} has no image converter; using ImageNet's mean/std")
        return IMAGENET_SCALE, IMAGENET_OFFSET
    channels = 3

    def per_channel(value, default):
        value = default if value is None else value
        return [float(v) for v in (value if isinstance(value, (list, tuple)) else
                                   [value] * channels)]

    return per_channel(converter.scale, 1.0), per_channel(converter.offset, 0.0)


def preset_spec(arch, preset):
    """What a `TransferNet` needs from a preset: the backbone's config (checked to be
    ``arch``) and its pixel scale and offset. Loads no weights."""
    config = _load_preset(arch, preset, load_weights=False).get_config()
    found = (config["block_type"], list(config["stackwise_num_blocks"]),
             bool(config["use_pre_activation"]))
    if found != PRETRAINED[arch].layout or config["input_conv_kernel_sizes"] != [7]:
        raise UserError(f"--weights {preset} holds a {found[0]} ResNet with "
                        f"{found[1]} blocks per stage{' (v2)' if found[2] else ''}, not "
                        f"{arch}; pass the matching --model")
    config.pop("dtype", None)  # the run's precision policy decides
    config["name"] = f"{arch}_base"
    scale, offset = _pixel_transform(preset)
    return {"backbone": config, "scale": scale, "offset": offset}


def build_base(arch, image_size, padding="torch", preset=None, width=1.0):
    """The backbone without classifier and pooling: it returns its last feature map.
    ``padding`` and ``width`` apply to the project's own ResNet-18/34 (see `ResNet`);
    ``preset`` (a `preset_spec`) builds keras-hub's backbone instead. Every batch norm
    runs through the fused kernel (`fuse_batch_norm`)."""
    if preset is not None:
        keras_hub = require("keras_hub", "pretrained")
        return fuse_batch_norm(
            keras_hub.models.ResNetBackbone.from_config(dict(preset["backbone"])))
    if arch in _OWN:
        return _OWN[arch](1000, stem="imagenet", include_top=False, padding=padding,
                          width=width, name=f"{arch}_base")
    return fuse_batch_norm(getattr(keras.applications, PRETRAINED[arch].application)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3),
        name=f"{arch}_base"))


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
        if width != 1.0 and (arch not in _OWN or preset is not None):
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
        network._tracker.untrack(getattr(network, name))
        setattr(network, name, None)
    return network


def load_pretrained(model, weights):
    """Loads pretrained weights into ``model.feature_extractor``: a tfresnet run's network
    without its head (`RunTransferNet`), or for a `TransferNet` a keras-hub preset or timm
    checkpoint (the model was built from its `preset_spec`), ``"imagenet"`` (Keras' download
    cache) or a local weights file. Weights of another architecture are refused, never
    partly loaded."""
    base = model.feature_extractor
    if isinstance(model, RunTransferNet):
        source = run_source(weights)
        if source is None:
            raise UserError(f"--weights {weights} is not a tfresnet run; pass a run folder "
                            "or its best.keras")
        network = keras.saving.load_model(source.path, compile=False).network
        head = {id(v) for v in network.fc.weights}
        _copy_weights([value for value, variable in zip(network.get_weights(), network.weights)
                       if id(variable) not in head], base, weights)
        return
    weights = resolve_weights(model.arch, weights)
    if model.preset is not None:
        source = _load_preset(model.arch, weights, load_weights=True)
        _copy_weights(source.get_weights(), base, weights)
        return
    if weights == "imagenet":
        try:
            source = getattr(keras.applications, PRETRAINED[model.arch].application)(
                include_top=False, weights="imagenet",
                input_shape=(model.image_size, model.image_size, 3))
        except Exception as err:
            raise UserError(f"could not download ImageNet weights for {model.arch} "
                            f"({type(err).__name__}); download them elsewhere and pass "
                            "--weights PATH")
        _copy_weights(source.get_weights(), base, "the ImageNet download")
        return
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights file {path} does not exist")
    if path.suffix == ".keras":
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as err:
            raise UserError(f"--weights {path} is not a loadable .keras file ({err})")
        network = getattr(source, "network", source)
        source = getattr(network, "feature_extractor", network)
        values = source.get_weights()
        if getattr(source, "fc", None) is not None:  # a whole tfresnet ResNet: drop its head
            values = values[:-len(source.fc.weights)]
        _copy_weights(values, base, path)
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


def _copy_weights(values, base, origin):
    shapes = [tuple(v.shape) for v in base.weights]
    if [tuple(v.shape) for v in values] != shapes:
        raise UserError(f"weights from {origin} do not fit this backbone ({len(values)} "
                        f"arrays vs {len(shapes)} expected, or different shapes; a bare "
                        "tfresnet ResNet must have the ImageNet stem and the same --width)")
    base.set_weights(values)
