"""What Keras 3.15 gets wrong for tfresnet's training, worked around in this one place.

Each fix names the Keras behaviour and the test that fails without it, and applies only
where that behaviour occurs; `tfresnet.models.Classifier` always trains in Keras' own
``fit`` loop. Nothing here is saved with a model.

Two Keras behaviours are avoided by the run's settings instead (`tfresnet.training.assemble.
steps_per_execution`): Keras runs the steps of an execution inside a ``tf.cond``, where
tf.distribute's cross-replica ops fail, so several replicas run one step per execution;
and it runs whole executions past the end of an epoch, so an execution always divides
the epoch.
"""

import keras
from keras import tree

from tfresnet.training.runtime import worker_count


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


def skip_single_replica_all_reduce(optimizer):
    """Keras sums the gradients over replicas even when there is one, with TF's all_reduce,
    which in a traced step registers a custom gradient in TF's global registry: each trace
    (each tuner trial) then keeps its whole step graph alive for good
    (``test_tune.py::test_trials_in_one_process_leave_no_step_graphs_behind``). Over one
    replica the sum is the identity."""
    for each in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if each is not None:
            each._all_reduce_sum_gradients = lambda grads_and_vars: grads_and_vars
