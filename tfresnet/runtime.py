"""Where and how a run computes: seeds, determinism, precision, XLA and tf.distribute."""

import dataclasses
import functools
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.quiet import native_stderr_silenced

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")


@dataclasses.dataclass
class Runtime:
    """The resolved execution settings of a run."""

    strategy: tf.distribute.Strategy
    precision: str
    jit: bool
    device: str


@functools.cache
def gpus():
    """The visible GPUs (probing CUDA quietly)."""
    with native_stderr_silenced():
        return tf.config.list_physical_devices("GPU")


def describe_device():
    """A short description of the accelerator (or CPU) this process computes on."""
    found = gpus()
    if found:
        details = tf.config.experimental.get_device_details(found[0])
        return f"{len(found)}x {details.get('device_name', 'GPU')}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def make_strategy(name):
    """``auto``: mirrored with several GPUs, else the default strategy (one device)."""
    if name == "auto":
        if len(gpus()) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All GPUs; without GPUs, every logical CPU device (how tests split one CPU in two).
        devices = None if gpus() else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        # Tried with two local workers: Keras 3.15's fit first fails reducing a nested batch
        # across workers, then reducing scalar logs (keras-team/keras#20585, open).
        raise UserError("--strategy multiworker: Keras 3's model.fit does not run under "
                        "MultiWorkerMirroredStrategy (keras-team/keras#20585); train on one "
                        "machine with --strategy mirrored")
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as err:
            raise UserError(f"--strategy tpu: no TPU found ({err})")
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"unknown strategy {name!r}")


def resolve_precision(precision):
    """``auto`` is mixed_float16 on a GPU of compute capability >= 7.0, else float32."""
    found = gpus()
    if precision == "auto":
        if found:
            capability = tf.config.experimental.get_device_details(found[0]).get(
                "compute_capability", (0, 0))
            return "mixed_float16" if capability >= (7, 0) else "float32"
        return "float32"
    if precision == "mixed_float16" and not found:
        raise UserError("--precision mixed_float16 needs a GPU (float16 on a CPU is slower, "
                        "not faster); use float32 or mixed_bfloat16")
    return precision


def configure(config):
    """Seeds everything and sets precision, determinism and the strategy for ``config``."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    jit = {"on": True, "off": False}.get(config.jit, bool(gpus()))
    return Runtime(make_strategy(config.strategy), precision, jit, describe_device())


def versions():
    """Library versions for summaries and benchmark records."""
    import cv2

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "opencv": cv2.__version__}

