"""Atomic writes and safe loading: a kill at any moment leaves every file readable."""

import errno
import os
import zipfile
from pathlib import Path

import keras

from tfresnet.errors import UserError


def atomic_write(path, write):
    """Calls ``write(tmp)`` for a temporary file beside ``path`` (same suffix, so libraries
    that go by the extension still work), then renames it over ``path``. On failure the
    previous ``path`` is untouched and the temporary file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, err)


def atomic_write_text(path, text):
    """Writes ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_model(model, path):
    """Saves ``model`` as ``.keras`` atomically."""
    atomic_write(path, model.save)


def atomic_save_figure(figure, path):
    """Saves a matplotlib figure as PNG atomically."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110))


def atomic_write_image(path, image):
    """Writes an OpenCV (BGR) image atomically, format by extension."""
    import cv2

    def write(tmp):
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"OpenCV could not encode {path.name}")

    path = Path(path)
    atomic_write(path, write)


def make_dir(path):
    """Creates the folder ``path`` (and its parents); a one-line `UserError` if it can't."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _disk_error(path, err)
    return path


def _disk_error(path, err):
    if err.errno == errno.ENOSPC:
        return UserError(f"disk full while writing {path}; the previous version is intact. "
                         "Free space and rerun the same command to resume")
    return UserError(f"cannot write {path}: {err.strerror or err}; check the folder's "
                     "permissions and free space")


def load_model(path):
    """Loads a tfresnet ``.keras`` file in Keras' safe mode.

    Raises:
        UserError: the file is missing, truncated, not a Keras archive, or not a tfresnet
            `Classifier` (whose normalisation and class names the tools rely on).
    """
    from tfresnet.models import Classifier

    path = Path(path)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise UserError(f"no model file at {path}; give a run folder with best.keras or a "
                        ".keras file written by tfresnet.train")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a Keras archive (truncated or another format); "
                        "use best.keras or last.keras from a finished epoch")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad archive
        raise UserError(f"{path} could not be loaded as a tfresnet model "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160]})")
    if not isinstance(model, Classifier):
        raise UserError(f"{path} holds a {type(model).__name__}, not a model trained by "
                        "tfresnet.train (no class names or normalisation inside)")
    return model
