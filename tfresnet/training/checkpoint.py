"""Background checkpoints: `.keras` files written from copies while training goes on."""

import concurrent.futures

import keras

from tfresnet.keras_fixes import every_layer
from tfresnet.runs.files import atomic_save_model


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
        for source, target in zip(every_layer(self.model), every_layer(copy)):
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
