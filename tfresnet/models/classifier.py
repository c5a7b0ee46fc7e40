"""`Classifier`: the task a training run saves -- preprocessor, network, loss, class names.

``pixels (0-255) -> ImagePreprocessor -> network -> float32 logits``, trained with cross
entropy plus an L2 penalty. Everything needed to use a saved model travels inside the
``.keras`` file: the preprocessing (input size, evaluation crop, scale and offset), the
class names and the data set, so ``predict`` never has to re-guess them. What ``fit`` does
beyond the loss is `tfresnet.models.step.TrainingSteps`.
"""

import keras
import tensorflow as tf

from tfresnet.compat import current_arguments
from tfresnet.losses import l2_penalty, l2_variables
from tfresnet.models.preprocessing import ImagePreprocessor
from tfresnet.models.step import TrainingSteps


@keras.saving.register_keras_serializable(package="tfresnet")
class Classifier(TrainingSteps, keras.Model):
    """Pixels (0-255) -> `ImagePreprocessor` -> network -> float32 logits, with CE + L2.

    Args:
        network: a registry model (or its serialized config) that returns logits.
        preprocessor: the `ImagePreprocessor` (or its serialized config).
        class_names: the name of each output class.
        l2: weight of the ``l2 / 2 * sum(||w||^2)`` penalty added to the loss.
        l2_on: ``"kernels"`` or ``"all"`` (see `tfresnet.losses`).
        dataset: name of the data set it was trained on (metadata).
    """

    def __init__(self, network=None, preprocessor=None, class_names=(), l2=0.0,
                 l2_on="kernels", dataset=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        if isinstance(preprocessor, dict):
            preprocessor = keras.saving.deserialize_keras_object(preprocessor)
        self.network = network
        self.preprocessor = preprocessor
        self.class_names = list(class_names)
        self.l2 = float(l2)
        self.l2_on = l2_on
        self.dataset = dataset
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.l2_tracker = keras.metrics.Mean(name="l2")

    @property
    def image_size(self):
        """``(height, width)`` of the images the model takes."""
        return self.preprocessor.input_size

    @property
    def eval_crop(self):
        """A photo model's evaluation centre crop (the preprocessor's), or None."""
        return self.preprocessor.crop

    @property
    def view(self):
        """The `View` an image of any size is prepared in before the model."""
        return self.preprocessor.view

    @property
    def backbone(self):
        """The old name of `network`. Keras stores the network's weights under this name
        (the first of the two in sorted order), so files of every version load."""
        return self.network

    def call(self, inputs, training=None):
        return keras.ops.cast(self.network(self.preprocessor(inputs), training=training),
                              "float32")

    # The two halves of ``call`` (the network's `ClassifierHead` contract), which Grad-CAM
    # and the feature baselines read: backbone up to the last feature map, then the head.

    def feature_map(self, pixels, training=False):
        """0-255 pixels -> the last convolutional feature map ``(batch, h, w, c)``."""
        return self.network.feature_map(self.preprocessor(pixels), training=training)

    def head(self, feature_map, training=False):
        """A feature map -> float32 logits (pooling, dropout, the dense classifier)."""
        return keras.ops.cast(self.network.head(feature_map, training=training), "float32")

    def features(self, pixels, training=False):
        """0-255 pixels -> the pooled penultimate features ``(batch, num_features)``."""
        return self.network.features(self.preprocessor(pixels), training=training)

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
        config = current_arguments("Classifier", config)  # 0.1: backbone=
        if "preprocessor" not in config:  # 0.1-0.3: mean/std, input size and crop
            config["preprocessor"] = ImagePreprocessor.from_mean_std(
                config.pop("image_size", (32, 32)), config.pop("mean"), config.pop("std"),
                crop=config.pop("eval_crop", None))
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            preprocessor=keras.saving.serialize_keras_object(self.preprocessor),
            class_names=self.class_names,
            l2=self.l2,
            l2_on=self.l2_on,
            dataset=self.dataset,
        )
        return config
