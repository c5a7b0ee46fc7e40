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


@dataclasses.dataclass
class Runtime:
    """The resolved execution settings of a run."""

    strategy: tf.distribute.Strategy
    precision: str
    jit: bool
    device: str

    @property
    def is_chief(self):
        """True on the one worker that writes the run folder."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or resolver.task_type is None:
            return True
        return resolver.task_type == "chief" or (
            resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


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
    """``auto``: multi-worker from TF_CONFIG, mirrored with several GPUs, else default."""
    if name == "auto":
        if "TF_CONFIG" in os.environ:
            name = "multiworker"
        elif len(gpus()) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ and "SLURM_JOB_ID" not in os.environ:
            raise UserError("--strategy multiworker needs TF_CONFIG (or a Slurm job)")
        resolver = None
        if "TF_CONFIG" not in os.environ:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
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

