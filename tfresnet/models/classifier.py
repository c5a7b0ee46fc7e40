"""`Classifier`: what a training run saves -- normalisation, backbone, L2 and class names.

Everything needed to use a saved model travels inside the ``.keras`` file: the per-channel
mean/std the images were normalised with, the input size and the class names. A model takes
raw 0-255 pixels, so ``predict`` never has to re-guess the preprocessing.
"""

import keras
import tensorflow as tf
from keras import tree

from tfresnet.losses import l2_penalty, l2_variables
from tfresnet.runtime import worker_count


@keras.saving.register_keras_serializable(package="tfresnet")
class Classifier(keras.Model):
    """Pixels (0-255) -> normalise -> network -> float32 logits, trained with CE + L2.

    Args:
        network: a registry model (or its serialized config) that returns logits.
        mean: per-channel mean of the training pixels, 0-255 scale.
        std: per-channel standard deviation, 0-255 scale.
        class_names: the name of each output class.
        image_size: ``(height, width)`` the backbone expects.
        eval_crop: for a model trained on photos, the fraction of the shorter side an
            image is centre-cropped to before resizing (`tfresnet.data.folders.View`);
            None: images are resized whole.
        l2: weight of the ``l2 / 2 * sum(||w||^2)`` penalty added to the loss.
        l2_on: ``"kernels"`` or ``"all"`` (see `tfresnet.losses`).
        dataset: name of the data set it was trained on (metadata).
    """

    def __init__(self, network=None, mean=None, std=None, class_names=(), image_size=(32, 32),
                 l2=0.0, l2_on="kernels", dataset=None, eval_crop=None, backbone=None,
                 **kwargs):
        super().__init__(**kwargs)
        network = network if network is not None else backbone  # files before 0.2
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        self.network = network
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.class_names = list(class_names)
        self.image_size = tuple(image_size)
        self.eval_crop = eval_crop
        self.l2 = float(l2)
        self.l2_on = l2_on
        self.dataset = dataset
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.l2_tracker = keras.metrics.Mean(name="l2")
        self.augmenter = None
        self.backbone_lr = None
        self.epoch_steps = None

    def set_augmenter(self, augmenter):
        """Augments each training batch inside the compiled train step (None: the batches
        come augmented). Training state, not saved with the model."""
        self.augmenter = augmenter

    def set_backbone_lr(self, multiplier):
        """Scales the updates of a pretrained backbone (``network.feature_extractor``) by
        ``multiplier``: 0 leaves it out of training (no gradients), 1 trains it like the
        head. Call ``make_train_function(force=True)`` after changing it mid-training."""
        self.network.feature_extractor.trainable = multiplier > 0
        self.backbone_lr = float(multiplier)

    @property
    def backbone(self):
        """The old name of `network`. Keras stores the network's weights under this name
        (the first of the two in sorted order), so files of every version load."""
        return self.network

    def normalise(self, inputs):
        """0-255 pixels -> what the backbone was trained on (float32)."""
        x = keras.ops.cast(inputs, "float32")
        return (x - keras.ops.array(self.mean)) / keras.ops.array(self.std)

    def call(self, inputs, training=None):
        return keras.ops.cast(self.network(self.normalise(inputs), training=training),
                              "float32")

    # --- tf.distribute: three Keras 3.15 failures, worked around only where they occur ---

    def _multi_worker(self):
        """Whether the strategy spans several workers."""
        return worker_count(self.distribute_strategy) > 1

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from a batch averaged across replicas, which cannot cross workers
        # (keras-team/keras#20585); the first local replica's batch has the same shapes.
        if iterator is not None and self._multi_worker():
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(batches))
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _per_replica_logs(self, logs):
        """Logs as length-1 vectors across workers: Keras averages them over replicas
        along axis 0, which a scalar lacks (keras-team/keras#20585)."""
        if not self._multi_worker():
            return logs
        return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}

    def _needs_own_loop(self):
        """Whether executions of several steps run in tfresnet's loop rather than Keras'.

        Keras' loop runs each step inside a ``tf.cond``, where cross-replica ops fail
        ("You must feed a value for placeholder tensor": the optimizer's ``merge_call``
        under MirroredStrategy, the collectives of several workers), and it always runs
        ``steps_per_execution`` steps while data is left: past the end of the epoch when
        the epoch is not a multiple of it (44 steps at 16 per execution ran 48), so epochs
        and the schedule drift and a resumed run differs from an uninterrupted one."""
        return self.steps_per_execution > 1

    def _step_loop(self, step_function, epoch_steps=None):
        """Runs up to ``steps_per_execution`` steps of ``step_function`` over a
        distributed iterator, conditions only around fetching, then returns the metrics;
        with ``epoch_steps``, never past the end of an epoch. Raises StopIteration (as
        Keras' loop does) when no batch was left."""
        strategy = self.distribute_strategy
        steps = self.steps_per_execution
        one_step = tf.function(lambda batch: strategy.run(step_function, args=(batch,)),
                               jit_compile=self.jit_compile, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def loop(iterator, limit):
            upcoming = iterator.get_next_as_optional()
            done = tf.constant(0)
            while done < limit and upcoming.has_value():
                one_step(upcoming.get_value())
                done += 1
                upcoming = tf.cond(done < limit, iterator.get_next_as_optional,
                                   lambda current=upcoming: current)
            results = strategy.run(self.get_metrics_result)
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

    def make_train_function(self, force=False):
        if self.distribute_strategy.num_replicas_in_sync == 1:
            # Keras sums the gradients over replicas even when there is one, with TF's
            # all_reduce, which in a traced step registers a custom gradient in TF's global
            # registry: each trace (each tuner trial) then keeps its whole step graph alive
            # for good. Over one replica the sum is the identity.
            for each in (self.optimizer, getattr(self.optimizer, "inner_optimizer", None)):
                if each is not None:
                    each._all_reduce_sum_gradients = lambda grads_and_vars: grads_and_vars
        if not self._needs_own_loop():
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = self._step_loop(self._train_step, self.epoch_steps)
        return self.train_function

    def make_test_function(self, force=False):
        if not self._needs_own_loop():
            return super().make_test_function(force)
        if self.test_function is None or force:
            self.test_function = self._step_loop(super().test_step)
        return self.test_function

    # --- training ---

    def test_step(self, data):
        return self._per_replica_logs(super().test_step(data))

    def train_step(self, data):
        return self._per_replica_logs(self._train_step(data))

    def _train_step(self, data):
        if self.augmenter is not None:
            data = self.augmenter(data[0], data[1], self.optimizer.iterations)
        if self.backbone_lr in (None, 0.0, 1.0):  # 0: the backbone is not trainable
            return super().train_step(data)
        # A per-layer learning rate for any optimizer (Keras 3 optimizers take one rate,
        # and scaling gradients would not scale Adam's update): the backbone's update is
        # scaled after the step, which needs a snapshot of its variables.
        base = self.network.feature_extractor.trainable_variables
        before = [keras.ops.copy(v) for v in base]  # snapshots, not references
        logs = super().train_step(data)
        for variable, old in zip(base, before):
            variable.assign(old + self.backbone_lr * (variable - old))
        return logs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under tf.distribute Keras divides the compiled loss by the number of replicas
        # (their gradients are summed); the L2 term must be divided the same way.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        ce = super().compute_loss(x, y, y_pred, sample_weight, training)
        l2 = l2_penalty(l2_variables(self.network, self.l2_on), self.l2)
        batch = keras.ops.shape(y_pred)[0]
        self.ce_tracker.update_state(ce * replicas, sample_weight=batch)
        self.l2_tracker.update_state(l2, sample_weight=batch)
        return ce + l2 / replicas

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            mean=self.mean,
            std=self.std,
            class_names=self.class_names,
            image_size=list(self.image_size),
            l2=self.l2,
            l2_on=self.l2_on,
            dataset=self.dataset,
            eval_crop=self.eval_crop,
        )
        return config
