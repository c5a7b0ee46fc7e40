"""The model registry: ``get_model(name, num_classes, **options)`` and ``list_models()``."""

from tfresnet.errors import UserError
from tfresnet.models.baselines import VGG, SmallCNN, small_cnn, vgg16
from tfresnet.models.classifier import Classifier
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
from tfresnet.models.transfer import ARCHITECTURES, TransferNet

_REGISTRY = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "vgg16": vgg16,
    "small_cnn": small_cnn,
}
# Pretrained ResNets with a new head (see `tfresnet.models.transfer`).
for _arch in ARCHITECTURES:
    _REGISTRY[f"{_arch}_imagenet"] = (
        lambda num_classes, _arch=_arch, **options: TransferNet(_arch, num_classes, **options))


def list_models():
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name, num_classes, **options):
    """Builds the registered model ``name`` with ``num_classes`` logits.

    Args:
        name: one of `list_models()`.
        num_classes: number of classes.
        **options: passed to the model's factory (``stem``, ``width``, ``dropout`` ...).

    Raises:
        UserError: for an unknown name or an option the model does not take.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    try:
        return _REGISTRY[name](num_classes, **options)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"bad options for model {name!r}: {err}") from None


__all__ = [
    "BasicBlock", "Bottleneck", "Classifier", "ResNet", "SmallCNN", "TransferNet", "VGG",
    "get_model", "list_models", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "small_cnn", "vgg16",
]
