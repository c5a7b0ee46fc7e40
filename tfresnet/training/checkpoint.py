"""Atomic writes and safe loading: a kill at any moment leaves every file readable."""

import concurrent.futures
import errno
import os
from pathlib import Path

import cv2
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


class BackgroundSaver:
    """Writes a training model's ``.keras`` files from copies, in a background thread:
    training waits only for the copy of its variables (31 ms against 275 ms for a save of
    a full-width ResNet-18 with momentum on a 2-core CPU; experiments/checkpoint_cost.py).

    Two copies are built once from the model's config: a deployable one (never compiled:
    weights and the model's own state) and a resumable one (compiled as the model is, with
    its optimizer). A copy is written while the next epoch trains; a save waits for the
    previous write of the same copy, and `wait` for every write (raising its error).
    Where the model's optimizer variables cannot be matched one to one, the resumable
    file is saved from the model itself, in the foreground.
    """

    def __init__(self, model):
        self.model = model
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.copies = {False: self._copy_of(model, compiled=False),
                       True: self._copy_of(model, compiled=True)}
        if not _same_shapes(model.optimizer.variables, self.copies[True].optimizer.variables):
            self.copies[True] = None
        self.writing = {}

    @staticmethod
    def _copy_of(model, compiled):
        copy = type(model).from_config(model.get_config())
        copy(keras.ops.zeros((1, *model.image_size, 3), "uint8"))
        if compiled:  # Keras builds the optimizer of a built model here
            copy.compile_from_config(model.get_compile_config())
        return copy

    def save(self, path, optimizer):
        """Copies the model's state now and writes it to ``path`` (with the optimizer's
        state when ``optimizer``) in the background."""
        copy = self.copies[optimizer]
        if copy is None:
            atomic_save_model(self.model, path)
            return
        if copy in self.writing:
            self.writing.pop(copy).result()
        _assign(self.model.variables, copy.variables)
        for source, target in zip(self.model._flatten_layers(), copy._flatten_layers()):
            target.trainable = source.trainable  # the config records each layer's state
        if optimizer:
            _assign(self.model.optimizer.variables, copy.optimizer.variables)
        self.writing[copy] = self.pool.submit(atomic_save_model, copy, path)

    def wait(self):
        """Returns once every file is written; raises the first write's error."""
        while self.writing:
            self.writing.popitem()[1].result()


def _same_shapes(sources, targets):
    return len(sources) == len(targets) and all(
        tuple(s.shape) == tuple(t.shape) for s, t in zip(sources, targets))


def _assign(sources, targets):
    if not _same_shapes(sources, targets):
        raise ValueError("a checkpoint copy no longer matches its model's variables")
    for source, target in zip(sources, targets):
        target.assign(source.value)


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
