"""Data sets as uint8 arrays in memory: ``load_dataset(name, ...)`` is the one entry point."""

import dataclasses
from pathlib import Path

import numpy as np

from tfresnet.data.splits import stratified_split
from tfresnet.errors import UserError

DATASETS = ("cifar100", "cifar10", "digits")


@dataclasses.dataclass
class Dataset:
    """Splits of one data set. Images are uint8 ``(N, H, W, 3)``, labels int32 ``(N,)``.

    ``coarse_*`` are CIFAR-100's superclass labels (``None`` elsewhere); ``x_val`` is empty
    when no validation split was asked for, ``x_test`` is ``None`` when the set has none.
    ``mean``/``std`` are per-channel statistics of the training split, 0-255 scale.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    mean: list[float]
    std: list[float]
    coarse_names: list[str] | None = None
    coarse_train: np.ndarray | None = None
    coarse_val: np.ndarray | None = None
    coarse_test: np.ndarray | None = None

    @property
    def num_classes(self):
        return len(self.class_names)

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


def load_dataset(name, data_dir=None, val_size=None, seed=0, image_size=None, download=True):
    """Loads a data set and carves a stratified validation split out of its training set.

    Args:
        name: ``"cifar100"``, ``"cifar10"``, ``"digits"`` or the path of an image folder
            (``root/train/<class>/*``, optional ``root/val``, ``root/test``).
        data_dir: where CIFAR's pickle folder is (or is downloaded to).
        val_size: images held out of training for validation; ``None``: 10 % (CIFAR: 5,000,
            the seed's 45k/5k), 0: none. Ignored when an image folder has its own ``val/``.
        seed: the seed of the validation split.
        image_size: ``(height, width)`` images of a folder are resized to (default 64x64).
        download: allow downloading CIFAR.
    """
    if name in ("cifar10", "cifar100"):
        from tfresnet.data.cifar import load_cifar

        arrays = load_cifar(name, data_dir, download)
    elif name == "digits":
        from tfresnet.data.digits import load_digits_rgb

        arrays = load_digits_rgb()
    elif Path(name).expanduser().is_dir():
        from tfresnet.data.folders import load_image_folder

        arrays = load_image_folder(name, tuple(image_size or (64, 64)))
    else:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)} "
                        "or give an image folder that exists")
    if val_size is not None and val_size < 0:
        raise UserError(f"--val-size must be >= 0. Received: {val_size}")

    x, y, coarse = arrays["x_train"], arrays["y_train"], arrays["coarse_train"]
    if "x_val" in arrays:
        x_val, y_val = arrays["x_val"], arrays["y_val"]
        coarse_val = None
    else:
        size = round(0.1 * len(y)) if val_size is None else val_size
        kept, held = stratified_split(y, size, seed)
        x_val, y_val = x[held], y[held]
        coarse_val = coarse[held] if coarse is not None else None
        x, y = x[kept], y[kept]
        coarse = coarse[kept] if coarse is not None else None

    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return Dataset(
        name=name,
        x_train=x, y_train=y, x_val=x_val, y_val=y_val,
        x_test=arrays["x_test"], y_test=arrays["y_test"],
        class_names=arrays["class_names"],
        mean=pixels.mean(axis=0).tolist(),
        std=np.maximum(pixels.std(axis=0), 1e-3).tolist(),
        coarse_names=arrays["coarse_names"],
        coarse_train=coarse, coarse_val=coarse_val, coarse_test=arrays["coarse_test"],
    )
