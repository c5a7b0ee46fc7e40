"""CIFAR-10 and CIFAR-100 in their original python-pickle layout.

Reads ``cifar-10-batches-py/`` or ``cifar-100-python/`` from a local folder, or downloads
the official archive through Keras' cache (``keras.utils.get_file``). Pickles are read with
an unpickler that only rebuilds NumPy arrays, so a data file can never run code.
"""

import pickle
from pathlib import Path

import keras
import numpy as np

from tfresnet.data.sources import Source, register_source
from tfresnet.errors import UserError

ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "cifar-100-python"),
}

# What a CIFAR pickle may reconstruct: NumPy arrays and dtypes, nothing else. (Python 3
# writes bytes at protocol 2 as _codecs.encode(text, "latin1"), which is harmless.)
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path):
    """Loads one CIFAR pickle as a dict with ``str`` keys, refusing anything but arrays."""
    try:
        with open(path, "rb") as f:
            raw = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"missing CIFAR file {path}; re-download or pass the right --data-dir")
    except Exception as err:  # truncated, foreign or malicious: all the same to the user
        raise UserError(f"{path} is not a readable CIFAR pickle ({err}); delete it and re-download")
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a CIFAR pickle (holds {type(raw).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _field(batch, key, path):
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry; is it a CIFAR file of the other kind?")
    return batch[key]


def _images(batch, path):
    data = np.asarray(_field(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: 'data' should be uint8 rows of 3072 pixels, got "
                        f"{data.dtype} {data.shape}")
    # Stored as N x (3 x 32 x 32) planes; the models want N x 32 x 32 x 3.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _names(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def find_cifar_folder(name, data_dir=None, download=True):
    """The folder holding ``name``'s pickles: ``data_dir`` itself, a child of it, or the
    Keras cache (downloading the archive if allowed)."""
    fname, origin, folder = ARCHIVES[name]
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        for candidate in (data_dir, data_dir / folder):
            if candidate.is_dir() and candidate.name == folder:
                return candidate
        other = "cifar-100-python" if name == "cifar10" else "cifar-10-batches-py"
        if (data_dir / other).is_dir() or data_dir.name == other:
            raise UserError(f"{data_dir} holds {other}, not {folder}: "
                            f"pass --dataset {'cifar100' if name == 'cifar10' else 'cifar10'}")
    cache_dir = str(data_dir) if data_dir is not None else None
    if not download:
        raise UserError(f"no {folder} folder in {data_dir}")
    try:
        path = Path(keras_get_file(fname, origin, cache_dir))
    except Exception as err:
        where = data_dir or Path("~/.keras/datasets").expanduser()
        raise UserError(f"could not download {origin} ({err.__class__.__name__}); place the "
                        f"extracted {folder}/ folder in {where} and pass --data-dir {where}")
    for candidate in [path, *path.rglob(folder)]:
        if candidate.is_dir() and candidate.name == folder:
            return candidate
    raise UserError(f"the archive {fname} did not contain {folder}/; delete {path} and retry")


def keras_get_file(fname, origin, cache_dir):
    """Downloads and extracts through Keras' cache; separate so tests can see no download
    is ever attempted."""
    return keras.utils.get_file(fname, origin=origin, extract=True, cache_dir=cache_dir)


def load_cifar(name, data_dir=None, download=True):
    """Loads CIFAR-10 or CIFAR-100.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: a folder holding (or that is) the extracted pickle folder; also where
            the archive is downloaded to when missing. ``None``: ``~/.keras/datasets``.
        download: allow downloading when the folder is not found.

    Returns:
        A `Source` (CIFAR-100 with its superclass labels and names).
    """
    folder = find_cifar_folder(name, data_dir, download)
    if name == "cifar10":
        return _load_cifar10(folder)
    return _load_cifar100(folder)


def _load_cifar10(folder):
    if (folder / "train").exists() and not (folder / "data_batch_1").exists():
        raise UserError(f"{folder} holds CIFAR-100 files, not CIFAR-10: pass --dataset cifar100")
    train = [read_pickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = read_pickle(folder / "test_batch")
    meta = read_pickle(folder / "batches.meta")
    paths = [folder / f"data_batch_{i}" for i in range(1, 6)]
    return Source(
        x_train=np.concatenate([_images(b, p) for b, p in zip(train, paths)]),
        y_train=np.concatenate([_field(b, "labels", p) for b, p in zip(train, paths)]
                               ).astype(np.int32),
        x_test=_images(test, folder / "test_batch"),
        y_test=np.asarray(_field(test, "labels", folder / "test_batch"), np.int32),
        class_names=_names(_field(meta, "label_names", folder / "batches.meta")),
    )


def _load_cifar100(folder):
    if (folder / "data_batch_1").exists() and not (folder / "train").exists():
        raise UserError(f"{folder} holds CIFAR-10 files, not CIFAR-100: pass --dataset cifar10")
    splits = {}
    for split in ("train", "test"):
        path = folder / split
        batch = read_pickle(path)
        splits[f"x_{split}"] = _images(batch, path)
        splits[f"y_{split}"] = np.asarray(_field(batch, "fine_labels", path), np.int32)
        splits[f"coarse_{split}"] = np.asarray(_field(batch, "coarse_labels", path), np.int32)
    meta = read_pickle(folder / "meta")
    return Source(**splits, class_names=_names(_field(meta, "fine_label_names", folder / "meta")),
                  coarse_names=_names(_field(meta, "coarse_label_names", folder / "meta")))


@register_source("cifar10")
def load_cifar10(data_dir=None, download=True):
    """CIFAR-10 (`load_cifar`)."""
    return load_cifar("cifar10", data_dir, download)


@register_source("cifar100")
def load_cifar100(data_dir=None, download=True):
    """CIFAR-100 with its 20 superclasses (`load_cifar`)."""
    return load_cifar("cifar100", data_dir, download)
