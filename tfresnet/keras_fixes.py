"""What Keras 3.15 gets wrong or keeps private that tfresnet needs, in this one place.

Each fix names the Keras behaviour and the test that fails without it, and applies only
where that behaviour occurs; `tfresnet.models.Classifier` always trains in Keras' own
``fit`` loop. Nothing here is saved with a model.

Two Keras behaviours are avoided by the run's settings instead
(`tfresnet.training.plan.steps_per_execution`): Keras runs the steps of an execution inside
a ``tf.cond``, where tf.distribute's cross-replica ops fail, so several replicas run one
step per execution; and it runs whole executions past the end of an epoch, so an execution
always divides the epoch.
"""

import keras
import tensorflow as tf
from keras import tree

from tfresnet.runtime.cluster import worker_count


def multi_worker(model):
    """Whether the model's strategy spans several workers."""
    return worker_count(model.distribute_strategy) > 1


def first_local_batch(model, iterator):
    """The first local replica's part of the next batch, for building the model.

    Keras builds from a batch averaged across replicas, which cannot cross workers
    (keras-team/keras#20585;
    ``test_distributed.py::test_two_workers_train_the_single_process_model``); the first
    local replica's batch has the same shapes."""
    for _, _, batches in iterator:
        return tree.map_structure(
            lambda v: model.distribute_strategy.experimental_local_results(v)[0],
            next(batches))
    return None


def per_replica_logs(model, logs):
    """Logs as length-1 vectors across workers: Keras averages them over replicas along
    axis 0, which a scalar lacks (keras-team/keras#20585; the same test)."""
    if not multi_worker(model):
        return logs
    return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}


def sum_gradients_first(optimizer, replicas):
    """Sums the gradients over replicas as ``optimizer.apply`` begins, once.

    Keras sums them inside the inner optimizer's update step, after the two decisions that
    need the global gradient: loss scaling decides "finite" from replica 0's gradients
    alone, so an overflow on another replica is applied
    (``keras/src/optimizers/loss_scale_optimizer.py``, ``_tf_apply``), and ``--clip-norm``
    clips each replica's part (``base_optimizer.py``, ``_backend_apply_gradients``).
    Summed first, both see what one device would (``test_distributed.py::
    test_loss_scaling_and_clipping_see_every_replicas_gradients``), and Keras' own sum
    becomes the identity.

    Over one replica the sum is the identity anyway, and skipping it matters: TF's
    all_reduce in a traced step registers a custom gradient in TF's global registry, so
    each trace (each tuner trial) would keep its whole step graph alive for good
    (``test_tune.py::test_trials_in_one_process_leave_no_step_graphs_behind``)."""
    for each in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if each is not None:
            each._all_reduce_sum_gradients = lambda grads_and_vars: grads_and_vars
    if replicas == 1:
        return
    apply = optimizer.apply

    def apply_summed(grads, trainable_variables=None):
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        grads = list(grads)
        for i, g in zip(present, summed):
            grads[i] = g
        return apply(grads, trainable_variables)

    optimizer.apply = apply_summed


def every_layer(model):
    """``model`` and every layer nested in it, at any depth, in Keras' order.

    Keras 3 has no public walk over nested layers (``Model.layers`` lists the direct
    children only), so this calls its private ``Layer._flatten_layers``, present from 3.0
    to 3.15. Sync batch norm, the fused batch norm in pretrained backbones, batch norm's
    momentum and the background checkpoints' trainable flags depend on it
    (``test_distributed.py::test_sync_bn_gives_every_replica_the_same_statistics``,
    ``test_transfer.py::test_frozen_run_from_a_keras_hub_preset_keeps_its_backbone_and_preprocessing``,
    ``test_train.py::test_background_checkpoints_hold_the_state_of_their_epoch_end``)."""
    return list(model._flatten_layers())


def forget_layer(model, name):
    """Sets attribute ``name`` of ``model`` (a layer) to None so that Keras no longer
    tracks, builds, trains or saves it. Keras 3 tracks every layer assigned to an attribute
    and has no public way to drop one; this calls its private ``_tracker.untrack``
    (``test_transfer.py::test_a_run_of_any_model_is_a_source_and_the_new_model_saves_and_loads``)."""
    model._tracker.untrack(getattr(model, name))
    setattr(model, name, None)


def batch_norm_layers(model):
    """Every Keras batch norm layer of ``model``, at any depth."""
    return [layer for layer in every_layer(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def batch_norm_statistics(model):
    """The moving means and variances of every batch norm layer of ``model``."""
    return [variable for layer in batch_norm_layers(model)
            for variable in (layer.moving_mean, layer.moving_variance)]


class AverageBatchNormAcrossReplicas(keras.callbacks.Callback):
    """Averages batch norm's moving statistics over the replicas before each validation,
    at each epoch's end and before a checkpoint inside an epoch (`average`).

    Keras creates them with ``aggregation="none"``: under tf.distribute each replica keeps
    its own copy, updated from its own part of every batch, and the saved model holds
    replica 0's, estimated from 1/N of the data. Averaged (timm's ``--dist-bn reduce``),
    the moving mean is the one a single device computes from the global batches, since it
    is linear in the batch means; the moving variance averages the replicas' batch
    variances, which leaves out the spread of their means (1/N of a batch's variance, in
    expectation). Averaging at any moment gives the same end result, so resuming stays
    exact. With ``--sync-bn`` every replica already holds the same statistics."""

    def __init__(self):
        super().__init__()
        self._average = None

    def average(self):
        variables = [v.value for v in batch_norm_statistics(self.model)]
        if self.model.distribute_strategy.num_replicas_in_sync == 1 or not variables:
            return
        if self._average is None:
            strategy = self.model.distribute_strategy

            def replica_average():
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(tf.distribute.ReduceOp.MEAN,
                                           [tf.identity(v) for v in variables])
                for variable, mean in zip(variables, means):
                    variable.assign(mean)

            self._average = tf.function(lambda: strategy.run(replica_average))
        self._average()

    def on_test_begin(self, logs=None):
        self.average()

    def on_epoch_end(self, epoch, logs=None):
        self.average()
