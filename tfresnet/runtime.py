"""Where and how a run computes: seeds, determinism, precision, XLA and tf.distribute."""

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.quiet import native_stderr_silenced

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")
# Keras releases whose trainer the multi-worker fixes in `Classifier` were tested against.
MULTI_WORKER_KERAS = ("3.15",)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")


def worker_count(strategy):
    """How many processes ``strategy`` spans: its replicas over this worker's devices."""
    replicas = strategy.num_replicas_in_sync
    return 1 if replicas == 1 else replicas // len(strategy.extended.worker_devices)


@dataclasses.dataclass
class Runtime:
    """The resolved execution settings of a run."""

    strategy: tf.distribute.Strategy
    precision: str
    jit: bool
    device: str

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


def cluster_environment():
    """``"tf_config"`` or ``"slurm"`` when this process is one task of a multi-worker
    job (TF_CONFIG set, or a Slurm job step of several tasks), else None."""
    if os.environ.get("TF_CONFIG"):
        return "tf_config"
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    return None


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
                        '"worker", "index": 0}} (see README "Scaling out")')
    if not isinstance(cluster, dict) or set(cluster) - {"chief", "worker"} or not all(
            isinstance(hosts, list) and hosts for hosts in cluster.values()):
        raise UserError("TF_CONFIG: the cluster must map 'chief' and/or 'worker' to lists of "
                        f"host:port addresses. Received: {json.dumps(cluster)}")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG: task {kind!r} {index!r} is not in the cluster "
                        f"{json.dumps(cluster)}; set task.index below the number of "
                        f"{kind!r} addresses")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _slurm_resolver():
    """The resolver of a Slurm job step. It hands each task of a node a share of the
    node's GPUs; on nodes without GPUs each task gets a nominal one (unset), so that it
    never probes GPUs with nvidia-smi."""
    # SLURM_STEP_TASKS_PER_NODE reads like "2(x3),1": 2 tasks on 3 nodes, then 1.
    tasks_per_node = max(int(part.split("(")[0]) for part in
                         os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","))
    gpus_per_node = int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)
    if gpus_per_node == 0:
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            gpus_per_node=tasks_per_node, gpus_per_task=1, auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SlurmClusterResolver(
        gpus_per_node=gpus_per_node, gpus_per_task=max(1, gpus_per_node // tasks_per_node))


def make_multi_worker_strategy():
    """MultiWorkerMirroredStrategy over the cluster that TF_CONFIG or Slurm describes."""
    release = ".".join(keras.__version__.split(".")[:2])
    if release not in MULTI_WORKER_KERAS:
        raise UserError(f"--strategy multiworker is tested with Keras "
                        f"{', '.join(MULTI_WORKER_KERAS)} only (its fixes touch Keras' trainer); "
                        f"this is Keras {keras.__version__}: pip install 'keras=="
                        f"{MULTI_WORKER_KERAS[-1]}.*'")
    source = cluster_environment()
    if source is None:
        raise UserError("--strategy multiworker needs TF_CONFIG (or a Slurm job step of "
                        'several tasks) on every worker; see README "Scaling out"')
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


def make_strategy(name):
    """``auto``: multi-worker inside a TF_CONFIG or Slurm cluster, mirrored with several
    GPUs, else the default strategy (one device)."""
    if name == "auto":
        if cluster_environment():
            name = "multiworker"
        elif len(gpus()) > 1:
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


def resolve_precision(precision):
    """``auto``: mixed_bfloat16 on GPUs of compute capability >= 8.0 (A100, H100),
    mixed_float16 on 7.x (V100, T4), else float32.

    From Ampere on, bfloat16 runs on the tensor cores at float16's peak rate (A100: 312
    dense TFLOPS for both; H100 SXM: 989) and has float32's 8-bit exponent, so it needs no
    loss scaling (TensorFlow's mixed precision guide): no LossScaleOptimizer, no skipped
    steps, no float16 overflow. Volta and Turing have no bfloat16 tensor cores."""
    found = gpus()
    if precision == "auto":
        if not found:
            return "float32"
        capability = tf.config.experimental.get_device_details(found[0]).get(
            "compute_capability", (0, 0))
        if capability >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if capability >= (7, 0) else "float32"
    if precision == "mixed_float16" and not found:
        print("warning: --precision mixed_float16 on a CPU runs the GPU's float16 code path "
              "several times slower than float32; use it to test, not to train",
              file=sys.stderr)
    return precision


def configure(config):
    """Seeds everything and sets precision, determinism and the strategy for ``config``."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    jit = {"on": True, "off": False}.get(config.jit, bool(gpus()))
    if jit and config.deterministic:
        # Keras compiles nothing with XLA under op determinism (not every op has a
        # deterministic XLA kernel); say so, and record what really runs.
        print("warning: --deterministic turns XLA off (Keras does not compile with XLA "
              "under op determinism); use --jit off to silence this", file=sys.stderr)
        jit = False
    runtime = Runtime(make_strategy(config.strategy), precision, jit, describe_device())
    if runtime.workers > 1 and jit and not gpus():
        raise UserError("--jit on: XLA has no collectives for CPU devices, so a multi-worker "
                        "run on CPUs must use --jit off")
    return runtime


# Optional libraries whose version a record names when they are installed.
OPTIONAL_LIBRARIES = ("keras-hub", "keras-tuner", "tf2onnx", "onnx", "onnxruntime",
                      "ai-edge-litert")


def versions():
    """Library versions for summaries and benchmark records: tfresnet's (with the git
    commit when it runs from a checkout), the core libraries' and the optional ones
    installed."""
    from importlib import metadata

    import cv2

    import tfresnet

    found = {"tfresnet": tfresnet.__version__}
    commit = source_commit()
    if commit:
        found["tfresnet_commit"] = commit
    found.update(python=platform.python_version(), tensorflow=tf.__version__,
                 keras=keras.__version__, numpy=np.__version__, opencv=cv2.__version__)
    for name in OPTIONAL_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def source_commit():
    """The git commit of the checkout tfresnet runs from (``+dirty`` with uncommitted
    changes to tracked files), or None when it is not a git checkout."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")

