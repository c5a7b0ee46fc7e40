"""A run's resolved `Runtime` (`configure`): seeds, determinism, precision, strategy, XLA."""

import dataclasses
import hashlib
import json

import keras
import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.runtime import devices
from tfresnet.runtime.cluster import cluster_faults, make_strategy, worker_count
from tfresnet.runtime.precision import resolve_jit, resolve_precision
from tfresnet.runtime.provenance import describe_device


@dataclasses.dataclass
class Runtime:
    """The resolved execution settings of a run."""

    strategy: tf.distribute.Strategy
    precision: str
    jit: bool
    device: str
    seed: int = 0  # of initialisation, split, shuffling and augmentation
    sync_bn: bool = False  # batch norm's statistics over every replica

    @property
    def workers(self):
        """How many processes train together (1 unless multi-worker)."""
        return worker_count(self.strategy)

    @property
    def chief(self):
        """Whether this process writes the run's files: the ``chief`` task, else worker 0
        (every single-process run)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.workers == 1 or resolver is None:
            return True
        if resolver.task_type == "chief":
            return True
        return (resolver.task_type == "worker" and resolver.task_id == 0
                and "chief" not in resolver.cluster_spec().as_dict())

    def agree(self, value, problem):
        """Raises `UserError` (``problem``) unless every worker passes the same ``value``
        (any JSON-able value). Every worker must call it at the same point; with one
        worker it returns at once."""
        if self.workers == 1:
            return
        text = json.dumps(value, sort_keys=True)
        digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
        strategy = self.strategy

        @tf.function
        def gather():
            return strategy.gather(strategy.run(lambda: tf.constant([digest], tf.int64)), 0)

        with cluster_faults():
            everyone = gather().numpy().tolist()
        if len(set(everyone)) > 1:
            raise UserError(problem)

    def barrier(self):
        """Returns once every worker has reached it."""
        self.agree(True, "")


def set_session_state(seed, precision):
    """Seeds Python, NumPy, TensorFlow and Keras' global generator with ``seed`` and sets
    Keras' global dtype policy to ``precision``: the part of `configure` that
    ``keras.backend.clear_session()`` resets, so whoever clears the session (keras-tuner,
    before each trial's build) sets it again before building a model. Op determinism, the
    strategy and XLA live in TensorFlow or the compiled model and survive it."""
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(precision)


def configure(settings, model="resnet18", width=1.0):
    """Seeds everything and sets precision, determinism, the strategy and XLA as the
    `RuntimeSettings` say, for a run of ``model`` at ``width`` (whose float32 or bfloat16
    choice on a CPU depends on them); warns once when NVIDIA GPUs are there but TensorFlow
    cannot use them."""
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    devices.warn_if_gpus_unused()
    precision = resolve_precision(settings.precision, model, width)
    set_session_state(settings.seed, precision)
    strategy = make_strategy(settings.strategy)
    jit = resolve_jit(settings.jit, strategy.num_replicas_in_sync, settings.deterministic)
    return Runtime(strategy, precision, jit, describe_device(), settings.seed, settings.sync_bn)
