"""`TrainingSteps`: what a `Classifier` does in Keras' ``fit`` beyond its loss.

A mixin of the training state that is never saved with a model: augmentation inside the
compiled step, the learning-rate multiplier of a pretrained backbone, and the fixes for
several workers (`tfresnet.keras_fixes`). Keras' own ``train_step`` does the rest.
"""

import keras
import tensorflow as tf

from tfresnet import keras_fixes


class TrainingSteps:
    """Mixed into a ``keras.Model`` whose ``network`` may hold a pretrained
    ``feature_extractor`` (`tfresnet.models.TransferNet`)."""

    augmenter = None
    backbone_lr = None

    def set_augmenter(self, augmenter):
        """Augments each training batch inside the compiled train step (None: the batches
        come augmented)."""
        self.augmenter = augmenter

    def set_backbone_lr(self, multiplier):
        """The transfer state of a pretrained backbone (``network.feature_extractor``), one
        setting: 0 freezes it (no gradients, batch norm in inference mode); above 0 trains
        it with its updates scaled by ``multiplier`` (1: like the head). Call
        ``make_train_function(force=True)`` after changing it mid-training."""
        self.network.set_frozen(multiplier == 0)
        self.backbone_lr = float(multiplier)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and keras_fixes.multi_worker(self):
            iterator, data_batch = None, keras_fixes.first_local_batch(self, iterator)
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        return keras_fixes.per_replica_logs(self, super().test_step(data))

    def augment(self, data):
        """``data`` augmented as the step does: seeded by the update count, and under
        several replicas also by the replica, so that each draws its own crops, flips and
        mixing weights (the same again when a run resumes)."""
        if self.augmenter is None:
            return data
        context = tf.distribute.get_replica_context()
        stream = context.replica_id_in_sync_group if context.num_replicas_in_sync > 1 else None
        return self.augmenter(data[0], data[1], self.optimizer.iterations, stream)

    def train_step(self, data):
        data = self.augment(data)
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
