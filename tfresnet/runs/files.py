"""Atomic writes: a kill at any moment leaves every file readable."""

import errno
import os
from pathlib import Path

import cv2

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
