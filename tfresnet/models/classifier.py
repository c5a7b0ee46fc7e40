"""`Classifier`: what a training run saves -- normalisation, backbone, L2 and class names.

Everything needed to use a saved model travels inside the ``.keras`` file: the per-channel
mean/std the images were normalised with, the input size and the class names. A model takes
raw 0-255 pixels, so ``predict`` never has to re-guess the preprocessing.
"""

import keras
import tensorflow as tf

from tfresnet.compat import current_arguments
from tfresnet.losses import l2_penalty, l2_variables
from tfresnet.training import keras_fixes


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
                 l2=0.0, l2_on="kernels", dataset=None, eval_crop=None, **kwargs):
        super().__init__(**kwargs)
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

    def set_augmenter(self, augmenter):
        """Augments each training batch inside the compiled train step (None: the batches
        come augmented). Training state, not saved with the model."""
        self.augmenter = augmenter

    def set_backbone_lr(self, multiplier):
        """The transfer state of a pretrained backbone (``network.feature_extractor``), one
        setting: 0 freezes it (no gradients, batch norm in inference mode); above 0 trains
        it with its updates scaled by ``multiplier`` (1: like the head). Call
        ``make_train_function(force=True)`` after changing it mid-training."""
        self.network.set_frozen(multiplier == 0)
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

    # --- training: Keras' fit loop; `tfresnet.training.keras_fixes` for several workers ---

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and keras_fixes.multi_worker(self):
            iterator, data_batch = None, keras_fixes.first_local_batch(self, iterator)
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        return keras_fixes.per_replica_logs(self, super().test_step(data))

    def train_step(self, data):
        if self.augmenter is not None:
            data = self.augmenter(data[0], data[1], self.optimizer.iterations)
        if self.backbone_lr in (None, 0.0, 1.0):  # 0: the backbone is not trainable
            return keras_fixes.per_replica_logs(self, super().train_step(data))
        # A per-layer learning rate for any optimizer (Keras 3 optimizers take one rate,
        # and scaling gradients would not scale Adam's update): the backbone's update is
        # scaled after the step, which needs a snapshot of its variables.
        base = self.network.feature_extractor.trainable_variables
        before = [keras.ops.copy(v) for v in base]  # snapshots, not references
        logs = super().train_step(data)
        for variable, old in zip(base, before):
            variable.assign(old + self.backbone_lr * (variable - old))
        return keras_fixes.per_replica_logs(self, logs)

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

    @classmethod
    def from_config(cls, config):
        return super().from_config(current_arguments("Classifier", config))  # 0.1: backbone=

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
