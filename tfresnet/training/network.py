"""A run's `Classifier` before compiling: its network (registry or pretrained), preprocessor."""


from tfresnet.errors import UserError
from tfresnet.keras_fixes import batch_norm_layers
from tfresnet.models import (
    Classifier,
    ImagePreprocessor,
    RunTransferNet,
    Transfer,
    TransferNet,
    get_model,
)
from tfresnet.models.backbones import is_preset, preset_spec, resolve_weights
from tfresnet.models.transfer import PretrainedNet
from tfresnet.training.pipelines import make_augmenter


def make_network(model, transfer, num_classes, size):
    """The network of ``model`` (`ModelSettings`) from the registry, or, as ``transfer``
    (`TransferSettings`) says, a pretrained network with a new head running at ``size`` px
    (`tfresnet.training.plan.input_size`; None from scratch): a tfresnet run's
    (`RunTransferNet`) or an ImageNet backbone (`TransferNet`)."""
    if transfer.transfer is Transfer.NONE:
        if model.imagenet_name:
            raise UserError(f"{model.model} is a pretrained backbone: choose --transfer "
                            "frozen, finetune, two-stage or scratch")
        return get_model(model.model, num_classes, **model.options)
    frozen = transfer.transfer is Transfer.FROZEN
    run = transfer.run
    if run is not None:
        return RunTransferNet(run.network, num_classes, image_size=size, pixels=run.pixels,
                              dropout=model.dropout, frozen_base=frozen)
    arch = model.architecture
    weights = resolve_weights(arch, transfer.weights)
    return TransferNet(arch, num_classes, image_size=size,
                       dropout=model.dropout, frozen_base=frozen,
                       preset=preset_spec(arch, weights) if is_preset(weights) else None,
                       width=model.width)


FIRST_EPOCH_SHARE = 0.95  # of batch norm's moving statistics, due to data by epoch 1's end


def shorten_batch_norm_memory(network, steps):
    """Lowers batch norm's momentum (0.9) where ``steps`` batches an epoch would leave its
    moving statistics mostly at their initial values at the first validation: to the
    momentum whose statistics owe `FIRST_EPOCH_SHARE` to the first epoch's batches (15
    steps: 0.82; 29 steps and more keep 0.9). Pretrained statistics are left alone."""
    momentum = (1 - FIRST_EPOCH_SHARE) ** (1 / steps)
    for layer in batch_norm_layers(network):
        layer.momentum = min(layer.momentum, momentum)


def make_preprocessor(network, data):
    """The `ImagePreprocessor` of a run: a pretrained network's own pixels at its own
    size (resized inside where the data differ), else the training data's mean/std;
    photos keep their evaluation crop."""
    crop = data.eval_crop
    if isinstance(network, PretrainedNet):
        return ImagePreprocessor(data.image_size, crop=crop,
                                 network_size=(network.image_size,) * 2, **network.pixels)
    return ImagePreprocessor.from_mean_std(data.image_size, data.mean, data.std, crop=crop)


def make_classifier(model, transfer, loss, augment, data, plan, runtime):
    """The `Classifier` of a run, not yet compiled (made under the run's strategy): the
    network of ``model`` and ``transfer`` (`ModelSettings`, `TransferSettings`) at the
    plan's input size with batch norm set for the run, its preprocessor, the ``loss``'s
    (`LossSettings`) L2, and the ``augment`` spec in its step when ``plan`` puts it there."""
    network = make_network(model, transfer, data.num_classes, plan.input_size)
    if runtime.sync_bn:
        for layer in batch_norm_layers(network):
            layer.synchronized = True  # batch statistics over every replica
    if not transfer.transfer.needs_weights:  # random initial statistics
        shorten_batch_norm_memory(network, plan.steps_per_epoch)
    classifier = Classifier(network, make_preprocessor(network, data), data.class_names,
                            l2=loss.l2, l2_on=loss.l2_on, dataset=data.name,
                            name=f"{model.model}_classifier")
    classifier.set_augmenter(make_augmenter(augment, data, runtime.seed)
                             if plan.augment_on == "step" else None)
    return classifier
