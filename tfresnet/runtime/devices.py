"""The GPUs a process uses: found without CUDA, Slurm's share split, then probed once."""

import functools
import glob
import os
import sys

import tensorflow as tf

from tfresnet.quiet import native_stderr_silenced

# Where the NVIDIA driver shows its GPUs, one entry each, read without CUDA: the first
# pattern that matches anything counts.
NVIDIA_DEVICES = ("/proc/driver/nvidia/gpus/*", "/dev/nvidia[0-9]*")


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


def cluster_environment():
    """``"tf_config"`` or ``"slurm"`` when this process is one task of a multi-worker
    job (TF_CONFIG set, or a Slurm job step of several tasks), else None."""
    if os.environ.get("TF_CONFIG"):
        return "tf_config"
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    return None


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
