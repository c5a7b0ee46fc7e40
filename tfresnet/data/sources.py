"""The data sources by name: one `register_source` loader each, returning a `Source`.

``load_dataset(name)`` (`tfresnet.data`) looks the name up here (an image folder is given
by its path instead), carves the validation split and wraps the result in a `Dataset`.
"""

import dataclasses

import numpy as np

SOURCES = {}  # name -> loader(data_dir=None, download=True) -> Source


@dataclasses.dataclass
class Source:
    """What a loader returns: uint8 ``(N, H, W, 3)`` images (or `ImageFiles`), int32
    labels and the class names.

    ``x_test``/``y_test`` are None for a set without a test split; ``x_val``/``y_val``
    only for a set with its own validation split (else one is held out of training);
    ``coarse_*``: superclass labels and names (CIFAR-100); ``skipped``: unreadable files.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None
    coarse_names: list[str] | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    skipped: int = 0


def register_source(name):
    """Registers the decorated ``loader(data_dir=None, download=True) -> Source`` as the
    data set ``name`` (``--dataset name``); returns it unchanged."""
    def decorate(loader):
        SOURCES[name] = loader
        return loader

    return decorate
