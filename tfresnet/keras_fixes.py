"""What Keras 3.15 gets wrong for tfresnet's training, worked around in this one place.

Each fix names the Keras behaviour and the test that fails without it, and applies only
where that behaviour occurs; everywhere else `tfresnet.models.Classifier` trains in Keras'
own ``fit`` loop. Nothing here is saved with a model.
"""

import keras
import tensorflow as tf
from keras import tree

from tfresnet.runtime import worker_count


def needs_step_loop(model):
    """Whether an execution of several steps must run in `step_loop` rather than Keras'.

    Keras runs the steps of an execution inside a ``tf.cond``, where cross-replica ops fail
    ("You must feed a value for placeholder tensor": the optimizer's ``merge_call`` under
    MirroredStrategy, the collectives of several workers:
    ``test_distributed.py::test_mirrored_with_several_steps_per_execution_matches_one_device``).
    And it always runs ``steps_per_execution`` steps while data is left, past the end of the
    epoch when the epoch is not a multiple of it (44 steps at 16 per execution ran 48), so
    epochs and the schedule drift and a resumed run differs from an uninterrupted one
    (``test_train.py::test_several_steps_per_execution_leave_the_curve_unchanged``). Where
    the execution divides the epoch on one replica, Keras' loop is correct and runs.
    """
    return model.steps_per_execution > 1 and (
        model.distribute_strategy.num_replicas_in_sync > 1
        or (model.epoch_steps or 0) % model.steps_per_execution != 0)


def step_loop(model, step_function, epoch_steps=None):
    """Keras' ``train_function``/``test_function`` contract for executions of several steps:
    runs up to ``steps_per_execution`` steps of ``step_function`` over a distributed
    iterator, with conditions only around fetching, then returns the metrics; with
    ``epoch_steps``, never past the end of an epoch. Raises StopIteration (as Keras' loop
    does) when no batch was left."""
    strategy = model.distribute_strategy
    steps = model.steps_per_execution
    one_step = tf.function(lambda batch: strategy.run(step_function, args=(batch,)),
                           jit_compile=model.jit_compile, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def loop(iterator, limit):
        upcoming = iterator.get_next_as_optional()
        done = tf.constant(0)
        while done < limit and upcoming.has_value():
            one_step(upcoming.get_value())
            done += 1
            upcoming = tf.cond(done < limit, iterator.get_next_as_optional,
                               lambda current=upcoming: current)
        results = strategy.run(model.get_metrics_result)
        return done, {name: strategy.reduce("MEAN", value, axis=None)
                      for name, value in results.items()}

    into_epoch = 0  # steps of the current epoch already run (runs start at an epoch)

    def function(iterator):
        nonlocal into_epoch
        limit = min(steps, epoch_steps - into_epoch) if epoch_steps else steps
        done, logs = loop(iterator, tf.constant(limit))
        if int(done) == 0:
            raise StopIteration
        if epoch_steps:
            into_epoch = (into_epoch + int(done)) % epoch_steps
        return logs

    return function


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
