"""The networks and the task: ``get_model(name, num_classes, **options)``, ``list_models()``
and `register_model` (`tfresnet.models.registry`), the ResNets, the baselines, the pretrained
backbones, and the `Classifier` (with its `ImagePreprocessor`) that a run saves."""

from pathlib import Path

from tfresnet.errors import UserError
from tfresnet.models.baselines import VGG, SmallCNN, small_cnn, vgg16
from tfresnet.models.classifier import Classifier
from tfresnet.models.preprocessing import ImagePreprocessor
from tfresnet.models.registry import get_model, list_models, register_model
from tfresnet.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from tfresnet.models.transfer import (
    ARCHITECTURES,
    TransferNet,
    is_preset,
    pretrained,
    resolve_weights,
)

# Pretrained ResNets with a new head (see `tfresnet.models.transfer`).
for _arch in ARCHITECTURES:
    register_model(f"{_arch}_imagenet")(
        lambda num_classes, _arch=_arch, **options: TransferNet(_arch, num_classes, **options))


# Transfer settings that act only in some modes.
ONLY_IN_TRANSFER_MODES = {"backbone_lr": ("finetune", "two-stage"),
                          "head_epochs": ("two-stage",)}


def check_model_settings(config):
    """A one-line `UserError` for model and transfer settings (of a `TrainConfig`) no run
    can use, before any data is loaded or downloaded."""
    if config.width <= 0:
        raise UserError(f"--width must be positive. Received: {config.width}")
    if config.model not in list_models():
        raise UserError(f"unknown model {config.model!r}; choose one of "
                        f"{', '.join(list_models())}")
    if config.transfer != "none" and config.model.removesuffix("_imagenet") not in ARCHITECTURES:
        raise UserError(f"no pretrained variant of {config.model!r}; --transfer works with "
                        f"{', '.join(ARCHITECTURES)} (and their _imagenet names)")
    if config.transfer == "scratch" and config.weights:
        raise UserError("--transfer scratch trains from random weights; drop --weights")
    if config.transfer == "none" and config.weights:
        raise UserError("--weights loads a pretrained backbone; add --transfer frozen, "
                        "finetune or two-stage, or drop --weights")
    if config.transfer in ("frozen", "finetune", "two-stage") and not config.weights:
        raise UserError(f"--transfer {config.transfer} needs --weights (imagenet, a preset "
                        "or a file)")
    if config.head_epochs < 0 or config.backbone_lr < 0:
        raise UserError("--head-epochs and --backbone-lr must be >= 0")
    if (config.weights and config.weights != "imagenet" and not is_preset(config.weights)
            and not Path(config.weights).is_file()):
        raise UserError(f"--weights file {config.weights} does not exist; pass 'imagenet', "
                        "a keras-hub preset name, an hf:// or kaggle:// handle, a preset "
                        "or timm directory, or a .weights.h5/.h5/.keras file")
    if config.transfer != "none":
        _refuse_unused_by_backbone(config)
    for name, modes in ONLY_IN_TRANSFER_MODES.items():
        if config.is_set(name) and config.transfer not in modes:
            raise UserError(f"--{name.replace('_', '-')} acts only with --transfer "
                            f"{' or '.join(modes)}, not {config.transfer}; drop it")


def _refuse_unused_by_backbone(config):
    """A one-line `UserError` for a model option given that a pretrained backbone (a
    `TransferNet`) would ignore: it has the ImageNet stem and its own initialisation, and
    only tfresnet's own ResNet-18/34 take ``--width``."""
    mode = f"--transfer {config.transfer}"
    if config.is_set("stem") and config.stem != "imagenet":
        raise UserError(f"--stem {config.stem} does not apply to {mode}: a pretrained "
                        "backbone has the ImageNet stem; drop --stem")
    if config.is_set("zero_init_residual"):
        raise UserError(f"--zero-init-residual does not apply to {mode}: the backbone "
                        "keeps its own initialisation; drop it")
    arch = config.model.removesuffix("_imagenet")
    own = (pretrained(arch).application is None
           and not is_preset(resolve_weights(arch, config.weights)))
    if config.is_set("width") and not own:
        raise UserError(f"--width applies to the resnet18/resnet34 backbones tfresnet builds "
                        f"(from a weights file or --transfer scratch), not to {arch} from "
                        "Keras Applications or a preset; drop --width")


__all__ = [
    "BasicBlock", "Bottleneck", "Classifier", "ImagePreprocessor", "ResNet", "SmallCNN",
    "TransferNet", "VGG", "check_model_settings", "get_model", "list_models",
    "register_model", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "small_cnn", "vgg16",
]
