"""The networks and the task: the model registry, the networks, the `Classifier` a run saves.

``get_model(name, num_classes, **options)``, ``list_models()`` and `register_model`
(`tfresnet.models.registry`), the ResNets, the baselines, the pretrained backbones, and the
`Classifier` (with its `ImagePreprocessor`), and their settings (`ModelSettings`,
`TransferSettings` with the `Transfer` mode).
"""

from tfresnet.models.backbones import ARCHITECTURES, backbone_model
from tfresnet.models.baselines import VGG, SmallCNN, small_cnn, vgg16
from tfresnet.models.blocks import BasicBlock, Bottleneck
from tfresnet.models.classifier import Classifier
from tfresnet.models.preprocessing import ImagePreprocessor
from tfresnet.models.registry import get_model, list_models, register_model
from tfresnet.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from tfresnet.models.settings import ModelSettings, Transfer, TransferSettings
from tfresnet.models.transfer import RunTransferNet, TransferNet

# Pretrained ResNets with a new head (see `tfresnet.models.transfer`).
for _arch in ARCHITECTURES:
    register_model(backbone_model(_arch))(
        lambda num_classes, _arch=_arch, **options: TransferNet(_arch, num_classes, **options))

__all__ = [
    "BasicBlock", "Bottleneck", "Classifier", "ImagePreprocessor", "ModelSettings", "ResNet",
    "RunTransferNet", "SmallCNN", "Transfer", "TransferNet", "TransferSettings", "VGG",
    "get_model", "list_models", "register_model", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152", "small_cnn", "vgg16",
]
