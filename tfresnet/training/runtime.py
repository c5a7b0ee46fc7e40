"""Where and how a run computes: seeds, determinism, precision, XLA, tf.distribute, and
which GPUs each process uses."""

import contextlib
import dataclasses
import functools
import glob
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
# Where the NVIDIA driver shows its GPUs, one entry each, read without CUDA: the first
# pattern that matches anything counts.
NVIDIA_DEVICES = ("/proc/driver/nvidia/gpus/*", "/dev/nvidia[0-9]*")


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
    """The visible GPUs, probing CUDA quietly, once: in a Slurm job step first narrowed to
    this task's share (`assign_slurm_gpus`), since CUDA reads CUDA_VISIBLE_DEVICES when
    it starts, here."""
    assign_slurm_gpus()
    with native_stderr_silenced():
        return tf.config.list_physical_devices("GPU")


def nvidia_gpu_count():
    """How many NVIDIA GPUs the driver shows (`NVIDIA_DEVICES`), without CUDA."""
    for pattern in NVIDIA_DEVICES:
        found = glob.glob(pattern)
        if found:
            return len(found)
    return 0


def visible_gpu_ids():
    """The GPUs this process may use, found without initialising CUDA: the entries of
    CUDA_VISIBLE_DEVICES when it is set (up to a negative one, which ends the list as in
    CUDA), else ``0..n-1`` of the NVIDIA GPUs the driver shows."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(nvidia_gpu_count())]
    ids = []
    for entry in listed.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        ids.append(entry.strip())
    return ids


def warn_if_gpus_unused():
    """Prints one warning when this process may use NVIDIA GPUs but TensorFlow sees none
    (a CPU-only TensorFlow, or its CUDA libraries missing)."""
    count = len(visible_gpu_ids())
    if count and nvidia_gpu_count() and not gpus():
        print(f"warning: this machine has {count} NVIDIA GPU(s) but this TensorFlow sees none, "
              "so training runs in float32 on the CPU; pip install \"tensorflow[and-cuda]\" "
              "(pip install -e \".[gpu]\" in a checkout)", file=sys.stderr)


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


def slurm_tasks_per_node():
    """The most tasks any node of this Slurm job step runs."""
    # SLURM_STEP_TASKS_PER_NODE reads like "2(x3),1": 2 tasks on 3 nodes, then 1.
    return max(int(part.split("(")[0]) for part in
               os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","))


def assign_slurm_gpus():
    """In a Slurm job step of several tasks on GPU nodes, narrows CUDA_VISIBLE_DEVICES to
    this task's share: the SLURM_LOCALID-th run of SLURM_GPUS_ON_NODE // (most tasks on a
    node) consecutive GPUs (SlurmClusterResolver's split; MultiWorkerMirroredStrategy
    wants as many on every worker), taken from the list Slurm set when it holds more, else
    from ``0..n-1``. A list no longer than the share (Slurm's per-task binding, or an
    earlier call) stays. It must run before anything initialises CUDA: `gpus`, the
    process's first look at its devices in commands and the Python API alike, calls it
    first; ``import tfresnet`` does not."""
    if cluster_environment() != "slurm":
        return
    gpus_on_node = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0)
    share = gpus_on_node // slurm_tasks_per_node()
    if share == 0:  # no GPUs, or more tasks than GPUs (`_slurm_resolver` refuses those)
        return
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        node = [str(i) for i in range(gpus_on_node)]
    elif len(listed.split(",")) > share:
        node = listed.split(",")
    else:
        return
    first = int(os.environ.get("SLURM_LOCALID", "0")) * share
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(node[first:first + share])


class _SlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """SlurmClusterResolver whose task has the GPUs `assign_slurm_gpus` left it (none on
    a node without GPUs), not the count it was built with."""

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        return {"GPU": len(gpus())}


def _slurm_resolver():
    """The resolver of a Slurm job step. The GPUs are already split (`assign_slurm_gpus`),
    so it sets none, and it is built with one nominal GPU per task, which lays out the
    tasks' ports without probing GPUs with nvidia-smi."""
    tasks_per_node = slurm_tasks_per_node()
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
    source = cluster_environment()
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
def _mirrored_strategy(devices):
    """One MirroredStrategy per process and device list. Each new one numbers its
    collective ops from the same first key, and TensorFlow's collective executor keeps
    what a key meant: after a run with ``--sync-bn``, the next strategy's first all-reduce
    met the old one's shape and every later run in the process failed ("Shape mismatch in
    the collective instance 100"; a second ``fit`` in a notebook, a bench sweep;
    ``test_replicas.py::test_runs_one_after_another_in_one_process``)."""
    return tf.distribute.MirroredStrategy(list(devices) if devices else None)


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
        devices = None if gpus() else tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        return _mirrored_strategy(devices)
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


# Linux's /proc/cpuinfo flags of x86 CPUs that execute bfloat16 natively: AVX512_BF16
# (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on) and AMX-BF16 (Intel Sapphire
# Rapids on). oneDNN runs TensorFlow's bfloat16 convolutions and matrix products on them.
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags as Linux lists them (its first ``flags`` line); empty where
    there is no such file (macOS, Windows) or no such line (ARM lists ``Features``)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def onednn_enabled():
    """Whether TensorFlow runs its CPU kernels through oneDNN: the default of x86 builds,
    off with ``TF_ENABLE_ONEDNN_OPTS=0``. Without it bfloat16 is emulated, and slow."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def native_cpu_bfloat16():
    """Whether ``--precision auto`` trains in bfloat16 on this CPU: it executes bfloat16
    natively (one of `NATIVE_BFLOAT16_FLAGS`), oneDNN is on, and ``TFRESNET_CPU_BFLOAT16``
    is not ``0`` (the switch that keeps auto at float32 on a CPU for a whole session)."""
    wanted = os.environ.get("TFRESNET_CPU_BFLOAT16", "1").strip().lower() not in (
        "0", "false", "no", "off")
    return wanted and onednn_enabled() and bool(cpu_flags() & set(NATIVE_BFLOAT16_FLAGS))


def cpu_batch_norm_in_float32():
    """Whether batch norm should run a bfloat16 input in float32 on this CPU
    (`tfresnet.models.resnet.BatchNormalization`): where oneDNN's bfloat16 kernel is the slow
    path. It ran 5x slower than float32 on an Intel Xeon with AMX, and 1.05-1.16x faster
    than the float32 casts on an AMD EPYC with AVX512_BF16 and no AMX (experiments/README,
    "bfloat16 on a CPU"); without oneDNN it is not measured, so float32 stays."""
    return not onednn_enabled() or "amx_bf16" in cpu_flags()


# The narrowest ResNet at which bfloat16 trained faster than float32 on a CPU: 1.11x at
# width 0.25 and 1.76x at 1.0, level at 0.125 (where a 15-epoch CIFAR-10 run also ended
# 0.39 points lower): below it the casts around batch norm eat the convolutions' gain.
CPU_BFLOAT16_MIN_WIDTH = 0.25


def cpu_bfloat16_pays(model, width):
    """Whether bfloat16 was measured faster on a CPU for this network: a ResNet (CIFAR or
    ImageNet stem) of width >= `CPU_BFLOAT16_MIN_WIDTH`. The small baselines were not."""
    return model.startswith("resnet") and width >= CPU_BFLOAT16_MIN_WIDTH


def resolve_precision(precision, model="resnet18", width=1.0):
    """``auto``: mixed_bfloat16 on GPUs of compute capability >= 8.0 (A100, H100),
    mixed_float16 on 7.x (V100, T4), else float32; on a CPU, mixed_bfloat16 where it
    executes bfloat16 natively (`native_cpu_bfloat16`) and it pays for ``model`` at
    ``width`` (`cpu_bfloat16_pays`), else float32.

    From Ampere on, bfloat16 runs on the tensor cores at float16's peak rate (A100: 312
    dense TFLOPS for both; H100 SXM: 989) and has float32's 8-bit exponent, so it needs no
    loss scaling (TensorFlow's mixed precision guide): no LossScaleOptimizer, no skipped
    steps, no float16 overflow. Volta and Turing have no bfloat16 tensor cores. On a CPU
    with AMX, ResNet-18 trained 1.76x faster than in float32 at full width, 1.11x at width
    0.25 and level at 0.125 (experiments/README.md, "bfloat16 on a CPU"). ``model`` and
    ``width`` matter on a CPU only."""
    found = gpus()
    if precision == "auto":
        if not found:
            fast = native_cpu_bfloat16() and cpu_bfloat16_pays(model, width)
            return "mixed_bfloat16" if fast else "float32"
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


def resolve_jit(mode, replicas, deterministic):
    """``auto``: XLA on a GPU with one replica. Several replicas run without XLA, as
    Keras' own ``jit_compile="auto"`` decides under tf.distribute: with XLA,
    MirroredStrategy's step reads variables across devices ("Trying to access resource
    ... located in device CPU:1 from device CPU:0"; keras-team/keras#19005, #19006), so
    ``on`` is refused there."""
    if replicas > 1:
        if mode == "on":
            raise UserError(f"--jit on: Keras cannot compile a step of {replicas} replicas "
                            "with XLA (keras-team/keras#19005); use --jit auto or --jit off")
        return False
    jit = mode == "on" or (mode == "auto" and bool(gpus()))
    if jit and deterministic:
        # Keras compiles nothing with XLA under op determinism (not every op has a
        # deterministic XLA kernel); say so, and record what really runs.
        print("warning: --deterministic turns XLA off (Keras does not compile with XLA "
              "under op determinism); use --jit off to silence this", file=sys.stderr)
        return False
    return jit


def set_session_state(seed, precision):
    """Seeds Python, NumPy, TensorFlow and Keras' global generator with ``seed`` and sets
    Keras' global dtype policy to ``precision``: the part of `configure` that
    ``keras.backend.clear_session()`` resets, so whoever clears the session (keras-tuner,
    before each trial's build) sets it again before building a model. Op determinism, the
    strategy and XLA live in TensorFlow or the compiled model and survive it."""
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(precision)


def configure(config):
    """Seeds everything and sets precision, determinism, the strategy and XLA for
    ``config``; warns once when NVIDIA GPUs are there but TensorFlow cannot use them."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    warn_if_gpus_unused()
    precision = resolve_precision(config.precision, config.model, config.width)
    set_session_state(config.seed, precision)
    strategy = make_strategy(config.strategy)
    jit = resolve_jit(config.jit, strategy.num_replicas_in_sync, config.deterministic)
    return Runtime(strategy, precision, jit, describe_device())


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
    changes to tracked files), or None when its package is not tracked by git (installed,
    or inside another project's checkout)."""
    import subprocess

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", "-C", package, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # fails outside its checkout
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")

