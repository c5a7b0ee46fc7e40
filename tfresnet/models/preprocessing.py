"""`ImagePreprocessor`: how 0-255 RGB pixels become what a network was trained on.

One serialisable layer holds all of it, and a `Classifier` saves it in its ``.keras`` file:

- before the model, on the host (`view`): an image of any size is resized to the model's
  input size, or for a model trained on photos centre-cropped to ``crop`` of its shorter
  side first (`tfresnet.data.folders.View`);
- inside the model (``call``): a resize to the network's own size where it differs (a
  pretrained backbone fed 32-px CIFAR images), the channel order, and ``x * scale +
  offset`` per channel: the data set's mean/std, or a pretrained backbone's own transform.

keras-hub's ``ImageConverter`` does the in-model half for its presets; this layer adds the
channel order of Keras Applications' Caffe-style ResNets, the evaluation crop and the input
size, and needs no keras-hub.
"""

import keras

from tfresnet.data.images import evaluation_view
from tfresnet.errors import UserError

CHANNEL_ORDERS = ("rgb", "bgr")


def _per_channel(name, value):
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3)]
    if len(values) != 3:
        raise UserError(f"{name} needs one value or three (per RGB channel). Received: "
                        f"{value}")
    return values


@keras.saving.register_keras_serializable(package="tfresnet")
class ImagePreprocessor(keras.layers.Layer):
    """0-255 RGB pixels -> the network's input, in float32.

    Args:
        input_size: ``(height, width)`` the model takes; `view` prepares images to it.
        scale, offset: per channel (or one value): ``x * scale + offset`` on 0-255 pixels,
            after the channel order is applied.
        channel_order: ``"rgb"``, or ``"bgr"`` for networks trained on BGR images (Keras
            Applications' ResNet50/101/152).
        network_size: ``(height, width)`` the network runs at, when it differs from
            ``input_size``: the model resizes (bilinear) to it first.
        crop: for a model trained on photos, the fraction of the shorter side an image is
            centre-cropped to before it is resized to ``input_size``; None resizes whole.
    """

    def __init__(self, input_size, scale=1.0, offset=0.0, channel_order="rgb",
                 network_size=None, crop=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # normalise in float32 under any precision
        super().__init__(**kwargs)
        if channel_order not in CHANNEL_ORDERS:
            raise UserError(f"channel_order must be one of {CHANNEL_ORDERS}. Received: "
                            f"{channel_order!r}")
        if crop is not None and not 0 < crop <= 1:
            raise UserError(f"the evaluation crop must be in (0, 1]. Received: {crop}")
        self.input_size = tuple(int(s) for s in input_size)
        self.scale = _per_channel("scale", scale)
        self.offset = _per_channel("offset", offset)
        self.channel_order = channel_order
        self.network_size = None if network_size is None else tuple(
            int(s) for s in network_size)
        self.crop = None if crop is None else float(crop)

    @classmethod
    def from_mean_std(cls, input_size, mean, std, **kwargs):
        """The preprocessor that computes ``(x - mean) / std`` per channel."""
        mean, std = _per_channel("mean", mean), _per_channel("std", std)
        return cls(input_size, scale=[1 / s for s in std],
                   offset=[-m / s for m, s in zip(mean, std)], **kwargs)

    @property
    def view(self):
        """The `View` that prepares a decoded image of any size for the model."""
        return evaluation_view(self.input_size, self.crop)

    def call(self, pixels):
        x = keras.ops.cast(pixels, "float32")
        if self.network_size is not None and tuple(x.shape[1:3]) != self.network_size:
            x = keras.ops.image.resize(x, self.network_size)
        if self.channel_order == "bgr":
            x = keras.ops.flip(x, axis=-1)
        return x * keras.ops.array(self.scale) + keras.ops.array(self.offset)

    def compute_output_shape(self, input_shape):
        size = self.network_size or tuple(input_shape[1:3])
        return (input_shape[0], *size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(input_size=list(self.input_size), scale=self.scale, offset=self.offset,
                      channel_order=self.channel_order, crop=self.crop,
                      network_size=None if self.network_size is None else list(
                          self.network_size))
        return config
