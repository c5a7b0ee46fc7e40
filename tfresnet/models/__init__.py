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
    RunTransferNet,
    TransferNet,
    is_preset,
    pretrained,
    resolve_weights,
    run_source,
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
    can use, before any data is loaded or downloaded. A tfresnet run given as ``--weights``
    sets the model, stem and width (`_take_from_run`)."""
    if config.width <= 0:
        raise UserError(f"--width must be positive. Received: {config.width}")
    if config.transfer == "scratch" and config.weights:
        raise UserError("--transfer scratch trains from random weights; drop --weights")
    if config.transfer == "none" and config.weights:
        raise UserError("--weights loads a pretrained backbone; add --transfer frozen, "
                        "finetune or two-stage, or drop --weights")
    if config.transfer in ("frozen", "finetune", "two-stage") and not config.weights:
        raise UserError(f"--transfer {config.transfer} needs --weights (imagenet, a preset, "
                        "a file or a tfresnet run)")
    run = run_source(config.weights)
    if run is not None:
        _take_from_run(config, run)
    if config.model not in list_models():
        raise UserError(f"unknown model {config.model!r}; choose one of "
                        f"{', '.join(list_models())}")
    if (run is None and config.transfer != "none"
            and config.model.removesuffix("_imagenet") not in ARCHITECTURES):
        raise UserError(f"no pretrained variant of {config.model!r}; --transfer works with "
                        f"{', '.join(ARCHITECTURES)} (and their _imagenet names), and with "
                        "any model from a tfresnet run folder given as --weights")
    if config.head_epochs < 0 or config.backbone_lr < 0:
        raise UserError("--head-epochs and --backbone-lr must be >= 0")
    if (run is None and config.weights and config.weights != "imagenet"
            and not is_preset(config.weights) and not Path(config.weights).is_file()):
        raise UserError(f"--weights file {config.weights} does not exist; pass 'imagenet', "
                        "a tfresnet run folder, a keras-hub preset name, an hf:// or "
                        "kaggle:// handle, a preset or timm directory, or a "
                        ".weights.h5/.h5/.keras file")
    if config.transfer != "none":
        _refuse_unused_by_backbone(config, run)
    for name, modes in ONLY_IN_TRANSFER_MODES.items():
        if config.is_set(name) and config.transfer not in modes:
            raise UserError(f"--{name.replace('_', '-')} acts only with --transfer "
                            f"{' or '.join(modes)}, not {config.transfer}; drop it")


def _take_from_run(config, run):
    """Sets ``config``'s model, stem and width to those of the tfresnet run it fine-tunes
    (`RunSource`), so the user need not repeat them; one given that contradicts the run
    is a one-line `UserError` (a default counts as not given)."""
    found = {"model": run.model, **run.options}
    for name in ("model", "stem", "width"):
        flag, given = f"--{name}", getattr(config, name)
        if config.is_set(name) and name not in found:
            raise UserError(f"{flag} does not apply to the {run.model} of --weights "
                            f"{config.weights}; drop {flag}")
        if config.is_set(name) and given != found[name]:
            has = f"is a {run.model}" if name == "model" else f"has {name} {found[name]}"
            raise UserError(f"{flag} {given} contradicts --weights {config.weights}, whose "
                            f"network {has}; drop {flag} (the run takes it from there)")
    for name, value in found.items():
        setattr(config, name, value)


def _refuse_unused_by_backbone(config, run):
    """A one-line `UserError` for a model option given that a pretrained network (a
    `TransferNet`, or a tfresnet ``run``'s) would ignore: it keeps its own
    initialisation; an ImageNet backbone has the ImageNet stem, and only tfresnet's own
    ResNet-18/34 take ``--width``."""
    mode = f"--transfer {config.transfer}"
    if config.is_set("zero_init_residual"):
        raise UserError(f"--zero-init-residual does not apply to {mode}: the backbone "
                        "keeps its own initialisation; drop it")
    if run is not None:
        return
    if config.is_set("stem") and config.stem != "imagenet":
        raise UserError(f"--stem {config.stem} does not apply to {mode}: a pretrained "
                        "backbone has the ImageNet stem; drop --stem")
    arch = config.model.removesuffix("_imagenet")
    own = (pretrained(arch).application is None
           and not is_preset(resolve_weights(arch, config.weights)))
    if config.is_set("width") and not own:
        raise UserError(f"--width applies to the resnet18/resnet34 backbones tfresnet builds "
                        f"(from a weights file or --transfer scratch), not to {arch} from "
                        "Keras Applications or a preset; drop --width")


__all__ = [
    "BasicBlock", "Bottleneck", "Classifier", "ImagePreprocessor", "ResNet",
    "RunTransferNet", "SmallCNN", "TransferNet", "VGG", "check_model_settings", "get_model",
    "list_models", "register_model", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "small_cnn", "vgg16",
]
