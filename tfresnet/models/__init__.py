"""The networks and the task: ``get_model(name, num_classes, **options)``, ``list_models()``
and `register_model` (`tfresnet.models.registry`), the ResNets, the baselines, the pretrained
backbones and the `Classifier` that a run saves."""

from tfresnet.models.baselines import VGG, SmallCNN, small_cnn, vgg16
from tfresnet.models.classifier import Classifier
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
from tfresnet.models.transfer import ARCHITECTURES, TransferNet

# Pretrained ResNets with a new head (see `tfresnet.models.transfer`).
for _arch in ARCHITECTURES:
    register_model(f"{_arch}_imagenet")(
        lambda num_classes, _arch=_arch, **options: TransferNet(_arch, num_classes, **options))

__all__ = [
    "BasicBlock", "Bottleneck", "Classifier", "ResNet", "SmallCNN", "TransferNet", "VGG",
    "get_model", "list_models", "register_model", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "small_cnn", "vgg16",
]
