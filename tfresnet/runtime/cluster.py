"""The tf.distribute strategy of a run: one device, mirrored GPUs, a TF_CONFIG or Slurm cluster."""

import contextlib
import functools
import json
import os
import re

import keras
import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.quiet import native_stderr_silenced
from tfresnet.runtime import devices

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")
# Keras releases whose trainer the multi-worker fixes in `Classifier` were tested against.
MULTI_WORKER_KERAS = ("3.15",)


def worker_count(strategy):
    """How many processes ``strategy`` spans: its replicas over this worker's devices."""
    replicas = strategy.num_replicas_in_sync
    return 1 if replicas == 1 else replicas // len(strategy.extended.worker_devices)


def _tf_config_resolver():
    """The resolver of a checked TF_CONFIG: a cluster of ``chief``/``worker`` host:port
    lists and this process's task in it."""
    try:
        spec = json.loads(os.environ["TF_CONFIG"])
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"TF_CONFIG is not valid ({type(err).__name__}: {err}); it must be JSON "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                        '"worker", "index": 0}} (see docs/scaling.md)')
    if not isinstance(cluster, dict) or set(cluster) - {"chief", "worker"} or not all(
            isinstance(hosts, list) and hosts for hosts in cluster.values()):
        raise UserError("TF_CONFIG: the cluster must map 'chief' and/or 'worker' to lists of "
                        f"host:port addresses. Received: {json.dumps(cluster)}")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG: task {kind!r} {index!r} is not in the cluster "
                        f"{json.dumps(cluster)}; set task.index below the number of "
                        f"{kind!r} addresses")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


class _SlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """SlurmClusterResolver whose task has the GPUs `devices.assign_slurm_gpus` left it
    (none on a node without GPUs), not the count it was built with."""

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        return {"GPU": len(devices.gpus())}


def _slurm_resolver():
    """The resolver of a Slurm job step. The GPUs are already split
    (`devices.assign_slurm_gpus`), so it sets none, and it is built with one nominal GPU per
    task, which lays out the tasks' ports without probing GPUs with nvidia-smi."""
    tasks_per_node = devices.slurm_tasks_per_node()
    gpus_on_node = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0)
    if 0 < gpus_on_node < tasks_per_node:
        raise UserError(f"Slurm started {tasks_per_node} tasks on a node with {gpus_on_node} "
                        f"GPU(s); start at most one task per GPU (srun --ntasks-per-node "
                        f"{gpus_on_node})")
    return _SlurmResolver(gpus_per_node=tasks_per_node, gpus_per_task=1, auto_set_gpu=False)


def make_multi_worker_strategy():
    """MultiWorkerMirroredStrategy over the cluster that TF_CONFIG or Slurm describes."""
    release = ".".join(keras.__version__.split(".")[:2])
    if release not in MULTI_WORKER_KERAS:
        raise UserError(f"--strategy multiworker is tested with Keras "
                        f"{', '.join(MULTI_WORKER_KERAS)} only (its fixes touch Keras' trainer); "
                        f"this is Keras {keras.__version__}: pip install 'keras=="
                        f"{MULTI_WORKER_KERAS[-1]}.*'")
    source = devices.cluster_environment()
    if source is None:
        raise UserError("--strategy multiworker needs TF_CONFIG (or a Slurm job step of "
                        'several tasks) on every worker; see docs/scaling.md')
    resolver = _tf_config_resolver() if source == "tf_config" else _slurm_resolver()
    with native_stderr_silenced():
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


@contextlib.contextmanager
def cluster_faults():
    """Turns the errors a lost worker causes in the others into one line that says what
    to do."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as err:
        # TensorFlow's message starts with the failed op's node name in {{...}}.
        reason = re.sub(r"\{\{.*?\}\}\s*", "", str(err).strip().splitlines()[0] if str(err).strip()
                        else "")[:120] or type(err).__name__
        raise UserError(f"lost contact with another worker ({reason}); restart every "
                        "worker with the same command: the run resumes from its last "
                        "finished epoch")


@functools.cache
def _mirrored_strategy(device_names):
    """One MirroredStrategy per process and device list. Each new one numbers its
    collective ops from the same first key, and TensorFlow's collective executor keeps
    what a key meant: after a run with ``--sync-bn``, the next strategy's first all-reduce
    met the old one's shape and every later run in the process failed ("Shape mismatch in
    the collective instance 100"; a second ``fit`` in a notebook, a bench sweep;
    ``test_replicas.py::test_runs_one_after_another_in_one_process``)."""
    return tf.distribute.MirroredStrategy(list(device_names) if device_names else None)


def make_strategy(name):
    """``auto``: multi-worker inside a TF_CONFIG or Slurm cluster, mirrored with several
    GPUs, else the default strategy (one device)."""
    if name == "auto":
        if devices.cluster_environment():
            name = "multiworker"
        elif len(devices.gpus()) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All GPUs; without GPUs, every logical CPU device (how tests split one CPU in two).
        return _mirrored_strategy(None if devices.gpus() else tuple(
            d.name for d in tf.config.list_logical_devices("CPU")))
    if name == "multiworker":
        return make_multi_worker_strategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as err:
            raise UserError(f"--strategy tpu: no TPU found ({err})")
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"unknown strategy {name!r}")
