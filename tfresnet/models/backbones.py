"""Pretrained backbones: where each comes from, and how it is built.

One `Pretrained` record per architecture, keras-hub presets and timm checkpoint
directories, and the backbones built from them:

- ``"imagenet"``: keras-hub's ImageNet ResNet-18 and timm's ResNet-34, Keras Applications'
  download for the ResNet-50/101/152 and V2 variants (`PRETRAINED`, one record each);
- a keras-hub preset (name, ``hf://`` / ``kaggle://`` handle, or a local preset directory)
  or a local timm checkpoint directory (config.json + model.safetensors): keras-hub's
  ``ResNetBackbone`` as the preset describes it, with the preset's pixel scale and offset
  (`preset_spec`);
- a local weights file or none (``--transfer scratch``): Keras Applications' ResNets or the
  project's own ResNet-18/34 with the ImageNet stem (`build_base`).

A tfresnet run as the source is `tfresnet.models.weights.run_source`.
"""

import dataclasses
import json
import zipfile
from pathlib import Path

import keras

from tfresnet.errors import UserError, missing_extra, require
from tfresnet.models.layers import fuse_batch_norm
from tfresnet.models.resnet import resnet18, resnet34


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
OWN_BACKBONES = {"resnet18": resnet18, "resnet34": resnet34}  # built by tfresnet
ARCHITECTURES = tuple(PRETRAINED)
PRETRAINED_SUFFIX = "_imagenet"  # of a pretrained backbone's registry name


def backbone_model(arch):
    """The registry name of ``arch``'s pretrained backbone: ``resnet50_imagenet``."""
    return arch + PRETRAINED_SUFFIX


def parse_model_name(model):
    """``(architecture, pretrained)`` of a registry name: ``("resnet50", True)`` for
    ``resnet50_imagenet``, ``("resnet50", False)`` for ``resnet50``."""
    return model.removesuffix(PRETRAINED_SUFFIX), model.endswith(PRETRAINED_SUFFIX)


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

    return find(keras_file_config(path))


def keras_file_config(path):
    """The model config stored in a ``.keras`` file, or None when it is no Keras archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def load_preset(arch, preset, load_weights):
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
    config = load_preset(arch, preset, load_weights=False).get_config()
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
    if arch in OWN_BACKBONES:
        return OWN_BACKBONES[arch](1000, stem="imagenet", include_top=False,
                                   padding=padding, width=width, name=f"{arch}_base")
    return fuse_batch_norm(getattr(keras.applications, PRETRAINED[arch].application)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3),
        name=f"{arch}_base"))
