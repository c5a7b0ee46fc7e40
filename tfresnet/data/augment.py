"""The augmentation registry, the spec parser and the `Augmenter` that applies a spec.

Every augmentation is a vectorised TensorFlow function of a whole batch and a per-step
seed, so the same code runs in the tf.data map (host) or inside the compiled train step
(`Classifier.set_augmenter`, on the accelerator), and the same seed and step always give
the same batch -- which is what makes resumed runs exact. The operations themselves are in
`tfresnet.data.augment_ops`.

Augmentation specs are comma-separated names with ``:key=value`` parameters, for example
``crop:pad=4:mode=zero,flip,cutout:size=8``, or one of the `PRESETS`.
"""

import functools
import inspect

import tensorflow as tf

from tfresnet.compat import current
from tfresnet.errors import UserError

AUGMENTATIONS = {}  # name -> batch operation (see `augmentation`)
PRESETS = {
    "none": "",
    "shift_flip": "shift,flip",  # Keras' ImageDataGenerator recipe: 0.2 shifts + mirroring
    "standard": "crop,flip",
    "strong": "crop,flip,cutout",
}
FILL_MODES = ("reflect", "zero", "nearest")
# Photos take a random-resized crop per image (`tfresnet.data.images.View`) where small
# images take these batch operations.
PHOTO_REPLACED = ("crop", "shift")
AUGMENT_PLACES = ("auto", "host", "device")  # where augmentation runs (TrainConfig.augment_on)


def augmentation(prepare=None, stateful=False, xla=True):
    """Registers a batch augmentation under its function's name: adding one is this one
    decorated function.

    The function is ``op(images, labels, seed, **params)`` -> ``(images, labels)`` on
    float32 BHWC images and one-hot labels; its keyword defaults declare its parameters
    (a ``mode`` is one of `FILL_MODES`, every other value a non-negative number).

    Args:
        prepare: ``prepare(params, num_classes)`` -> params: fills data-dependent defaults
            and raises `UserError` for values the op cannot use.
        stateful: the function is a factory ``op(layer_seed, **params)`` returning the
            batch operation (for ops that keep state, such as a Keras layer).
        xla: False for ops that XLA cannot compile: they run in tf.data, never inside an
            XLA-compiled train step.
    """
    def register(op):
        op.prepare, op.stateful, op.xla = prepare, stateful, xla
        AUGMENTATIONS[op.__name__] = op
        return op
    return register


def _parameters(op):
    skip = 1 if op.stateful else 3
    return {name: p.default for name, p in
            list(inspect.signature(op).parameters.items())[skip:]}


def parse_augment(spec, num_classes=10):
    """Parses a preset name or spec string into ``[(name, params), ...]``.

    Raises:
        UserError: unknown augmentation or parameter, or a value out of range.
    """
    spec = PRESETS.get(current("augment", spec), spec)
    parsed = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, *assignments = item.split(":")
        if name not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {name!r}; choose from "
                            f"{', '.join(AUGMENTATIONS)} or a preset: {', '.join(PRESETS)}")
        op = AUGMENTATIONS[name]
        params = _parameters(op)
        for assignment in assignments:
            key, _, value = assignment.partition("=")
            if key not in params:
                raise UserError(f"augmentation {name!r} has no parameter {key!r}; it takes "
                                f"{', '.join(params) or 'none'}")
            params[key] = value if key == "mode" else _number(name, key, value)
        _check(name, params)
        parsed.append((name, op.prepare(params, num_classes) if op.prepare else params))
    return parsed


def xla_compatible(spec):
    """Whether XLA can compile every augmentation of a spec (checked without building any)."""
    return all(AUGMENTATIONS[name].xla for name, _ in parse_augment(spec))


def _number(name, key, value):
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"augmentation {name}:{key} needs a number. Received: {value!r}")
    return int(number) if number.is_integer() else number


def _check(name, params):
    mode = params.get("mode")
    if mode is not None and mode not in FILL_MODES:
        raise UserError(f"{name}:mode must be one of {', '.join(FILL_MODES)}. Received: {mode!r}")
    for key, value in params.items():
        if key != "mode" and value is not None and (
                not isinstance(value, (int, float)) or value < 0):
            raise UserError(f"{name}:{key} must be a non-negative number. Received: {value!r}")



class Augmenter:
    """Applies a parsed augmentation list to ``(images, one-hot labels)`` batches.

    Args:
        spec: a preset or spec string (see `parse_augment`).
        num_classes: for the size defaults.
        seed: with the step number, fixes every random choice.
        skip: names of the spec's operations to leave out.
    """

    def __init__(self, spec, num_classes, seed=0, skip=()):
        self.seed = int(seed)
        self.ops = []
        parsed = [item for item in parse_augment(spec, num_classes) if item[0] not in skip]
        for index, (name, params) in enumerate(parsed):
            op = AUGMENTATIONS[name]
            self.ops.append(op(self.seed + index, **params) if op.stateful
                            else functools.partial(op, **params))

    def __bool__(self):
        return bool(self.ops)

    def __call__(self, images, labels, step, stream=None):
        """``stream``: a replica's number, folded into the seed (None: one stream)."""
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.float32)
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        if stream is not None:
            base = tf.random.experimental.stateless_fold_in(base, tf.cast(stream, tf.int64))
        for index, op in enumerate(self.ops):
            seed = tf.random.experimental.stateless_fold_in(base, index)
            images, labels = op(images, labels, seed)
        return images, labels
