"""A run's compiled `Classifier`, built under its strategy as its `Plan` says."""

import keras
import numpy as np

from tfresnet import keras_fixes
from tfresnet.evaluation.inference import TOP_K, has_top_k
from tfresnet.losses import cross_entropy
from tfresnet.models.weights import load_pretrained
from tfresnet.optim.optimizers import make_optimizer
from tfresnet.training.network import make_classifier


def build_model(data, runtime, plan, *, model, transfer, loss, optimizer, schedule, augment,
                pretrained=True):
    """The compiled `Classifier` of a run, built under the runtime's strategy as ``plan``
    (`tfresnet.training.plan.make_plan`) says.

    Args:
        model, transfer, loss: the network's `ModelSettings` and `TransferSettings`, and
            the `LossSettings`.
        optimizer, schedule: the `OptimizerSettings` and `ScheduleSettings`.
        augment: the ``--augment`` spec, which the model runs in its step where ``plan``
            puts it there.
        pretrained: load the transfer's weights into the backbone (a resumed run loads its
            own checkpoint instead).
    """
    with runtime.strategy.scope():
        classifier = make_classifier(model, transfer, loss, augment, data, plan, runtime)
        classifier.compile(
            optimizer=make_optimizer(optimizer, schedule, plan.learning_rate,
                                     plan.steps_per_epoch),
            loss=cross_entropy(loss.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                     *[keras.metrics.TopKCategoricalAccuracy(TOP_K, name="top5")]
                     * has_top_k(data.num_classes)],
            jit_compile=runtime.jit,
            steps_per_execution=plan.steps_per_execution,
        )
        keras_fixes.sum_gradients_first(classifier.optimizer,
                                        runtime.strategy.num_replicas_in_sync)
        classifier(np.zeros((1, *data.image_size, 3), np.uint8))
        classifier.optimizer.build(classifier.trainable_variables)
    if pretrained and transfer.weights:
        load_pretrained(classifier.network, transfer.weights)
    return classifier
