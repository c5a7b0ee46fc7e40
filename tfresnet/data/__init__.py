"""Data sets: ``load_dataset(name, ...)`` is the one entry point.

CIFAR and digits are uint8 arrays in memory; an image folder's splits are `ImageFiles`,
streamed from disk.
"""

import dataclasses
import functools
from pathlib import Path

import numpy as np

from tfresnet.data import augment_ops, cifar, digits  # noqa: F401  (they register)
from tfresnet.data.folders import ImageFiles, load_image_folder, training_images
from tfresnet.data.pipeline import image_batches
from tfresnet.data.sources import SOURCES
from tfresnet.data.splits import stratified_split
from tfresnet.errors import UserError

STATS_IMAGES = 5_000  # a folder's mean/std come from this many training images at most


@dataclasses.dataclass
class Dataset:
    """Splits of one data set. Images are uint8 ``(N, H, W, 3)`` arrays, or `ImageFiles`
    (image folders) that behave like them; labels are int32 ``(N,)``.

    ``coarse_*`` are CIFAR-100's superclass labels (``None`` elsewhere); ``x_val`` is empty
    when no validation split was asked for, ``x_test`` is ``None`` when the set has none.
    ``mean``/``std`` are per-channel statistics of the training split, 0-255 scale,
    computed on first use with bounded memory. ``skipped``: files of an image folder that
    are not readable images.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    coarse_names: list[str] | None = None
    coarse_train: np.ndarray | None = None
    coarse_val: np.ndarray | None = None
    coarse_test: np.ndarray | None = None
    skipped: int = 0

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def streamed(self):
        """Whether the images are files decoded on demand (an image folder)."""
        return isinstance(self.x_train, ImageFiles)

    @property
    def preprocessing(self):
        """How the images reach the network: ``in_memory`` arrays, or the streamed folder's
        view (``photo``, ``whole``, ...)."""
        return self.x_train.view.kind if self.streamed else "in_memory"

    @property
    def eval_crop(self):
        """The central crop photos are evaluated through (None for other images)."""
        return self.x_train.view.eval_crop if self.preprocessing == "photo" else None

    def training_images(self, augment, images=None):
        """The training images (or ``images`` in their place) as the ``augment`` spec
        streams them (`tfresnet.data.folders.training_images`)."""
        return training_images(augment, self.x_train if images is None else images)

    def splits_once(self):
        """``(x_train, y_train, x_val, y_val)`` for many pipelines of one process (a
        search's trials): arrays become tensors once, files stay as they are."""
        import tensorflow as tf

        return [a if isinstance(a, ImageFiles) else tf.constant(a)
                for a in (self.x_train, self.y_train, self.x_val, self.y_val)]

    @functools.cached_property
    def _stats(self):
        images = self.x_train
        if self.streamed and len(images) > STATS_IMAGES:
            pick = np.random.default_rng(0).choice(len(images), STATS_IMAGES, replace=False)
            images = images[np.sort(pick)]
        return channel_stats(images)

    @property
    def mean(self):
        return self._stats[0]

    @property
    def std(self):
        return self._stats[1]

    def counts(self):
        """Images per split and the files skipped, as recorded in ``summary.json``."""
        return {"train": len(self.y_train), "val": len(self.y_val),
                "test": 0 if self.y_test is None else len(self.y_test),
                "skipped_files": self.skipped}

    def describe(self):
        """One line for the start of a run: the splits, the input and how it is made."""
        counts = self.counts()
        how = (f", {self.preprocessing} preprocessing, streamed from disk"
               if self.streamed else "")
        skipped = f"; {self.skipped} unreadable file(s) skipped" if self.skipped else ""
        return (f"{self.name}: {counts['train']:,} training, {counts['val']:,} validation, "
                f"{counts['test']:,} test images of {self.num_classes} classes at "
                f"{self.image_size[0]}x{self.image_size[1]}{how}{skipped}")

    @property
    def image_size(self):
        return tuple(self.x_train.shape[1:3])

    @property
    def fine_to_coarse(self):
        """``fine_to_coarse[fine_label]`` = superclass label (CIFAR-100 only, else ``None``)."""
        if self.coarse_train is None:
            return None
        table = np.zeros(self.num_classes, np.int32)
        table[self.y_train] = self.coarse_train
        return table


def in_memory(images):
    """``images`` as a uint8 array: `ImageFiles` decoded (keep them few), arrays as they
    are."""
    return images.load() if isinstance(images, ImageFiles) else images


def channel_stats(images, chunk_pixels=2**20):
    """Per-channel mean and std (0-255 scale, std at least 1e-3) of uint8 images or
    `ImageFiles`, from exact per-channel histograms of chunks of about ``chunk_pixels``
    pixels: memory stays that of one chunk."""
    height, width = images.shape[1:3]
    counts = np.zeros((3, 256), np.int64)
    for batch in image_batches(images, max(1, chunk_pixels // (height * width))):
        for channel in range(3):
            counts[channel] += np.bincount(batch[..., channel].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    total = np.maximum(counts.sum(axis=1), 1)
    mean = counts @ values / total
    variance = counts @ np.square(values) / total - np.square(mean)
    return mean.tolist(), np.maximum(np.sqrt(np.maximum(variance, 0.0)), 1e-3).tolist()


def load_dataset(name, data_dir=None, val_size=None, seed=0, image_size=None, download=True,
                 view="auto", crop_scale=None, crop_ratio=None, eval_crop=None):
    """Loads a data set and carves a stratified validation split out of its training set.

    Args:
        name: a registered source (`tfresnet.data.sources`: ``"cifar100"``, ``"cifar10"``,
            ``"digits"``) or the path of an image folder
            (``root/train/<class>/*``, optional ``root/val``, ``root/test``).
        data_dir: where CIFAR's pickle folder is (or is downloaded to).
        val_size: images held out of training for validation; ``None``: 10 % (CIFAR: 5,000,
            the seed's 45k/5k), 0: none. Ignored when an image folder has its own ``val/``.
        seed: the seed of the validation split.
        image_size: ``(height, width)`` of an image folder's model input; None: by the
            folder's view (see `tfresnet.data.folders.load_image_folder`).
        download: allow downloading CIFAR.
        view, crop_scale, crop_ratio, eval_crop: an image folder's preprocessing
            (`tfresnet.data.folders.View`).
    """
    if name in SOURCES:
        source = SOURCES[name](data_dir=data_dir, download=download)
    elif Path(name).expanduser().is_dir():
        source = load_image_folder(name, image_size, view, crop_scale, crop_ratio, eval_crop)
    else:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(SOURCES)} "
                        "or give an image folder that exists")
    if val_size is not None and val_size < 0:
        raise UserError(f"--val-size must be >= 0. Received: {val_size}")

    x, y, coarse = source.x_train, source.y_train, source.coarse_train
    if source.x_val is not None:
        x_val, y_val = source.x_val, source.y_val
        coarse_val = None
    else:
        size = round(0.1 * len(y)) if val_size is None else val_size
        kept, held = stratified_split(y, size, seed)
        x_val, y_val = x[held], y[held]
        coarse_val = coarse[held] if coarse is not None else None
        x, y = x[kept], y[kept]
        coarse = coarse[kept] if coarse is not None else None

    return Dataset(
        name=name,
        x_train=x, y_train=y, x_val=x_val, y_val=y_val,
        x_test=source.x_test, y_test=source.y_test,
        class_names=source.class_names,
        coarse_names=source.coarse_names,
        coarse_train=coarse, coarse_val=coarse_val, coarse_test=source.coarse_test,
        skipped=source.skipped,
    )
