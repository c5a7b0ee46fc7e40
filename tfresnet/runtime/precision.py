"""How a run computes: precision (with the CPU's bfloat16 choices) and XLA."""

import os
import sys

import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.runtime import cpu, devices

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")

# Linux's /proc/cpuinfo flags of x86 CPUs that execute bfloat16 natively: AVX512_BF16
# (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on) and AMX-BF16 (Intel Sapphire
# Rapids on). oneDNN runs TensorFlow's bfloat16 convolutions and matrix products on them.
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def onednn_enabled():
    """Whether TensorFlow runs its CPU kernels through oneDNN: ``TF_ENABLE_ONEDNN_OPTS`` where
    set (`tfresnet.runtime.cpu.onednn_choice` sets it on x86 CPUs), else TensorFlow's own
    answer. Without it bfloat16 is emulated, and slow."""
    value = os.environ.get(cpu.ONEDNN_VARIABLE)
    if value is not None:
        return value.strip().lower() not in ("0", "false")
    from tensorflow.python.util import _pywrap_util_port  # no public API says it

    return bool(_pywrap_util_port.IsMklEnabled())


def native_cpu_bfloat16():
    """Whether ``--precision auto`` trains in bfloat16 on this CPU: it executes bfloat16
    natively (one of `NATIVE_BFLOAT16_FLAGS`), oneDNN is on, and ``TFRESNET_CPU_BFLOAT16``
    is not ``0`` (the switch that keeps auto at float32 on a CPU for a whole session)."""
    wanted = os.environ.get("TFRESNET_CPU_BFLOAT16", "1").strip().lower() not in (
        "0", "false", "no", "off")
    return wanted and onednn_enabled() and bool(cpu.cpu_flags() & set(NATIVE_BFLOAT16_FLAGS))


def cpu_batch_norm_in_float32():
    """Whether batch norm should run a bfloat16 input in float32 on this CPU
    (`tfresnet.models.layers.BatchNormalization`): where oneDNN's bfloat16 kernel is the slow
    path. It ran 5x slower than float32 on an Intel Xeon with AMX, and 1.05-1.16x faster
    than the float32 casts on an AMD EPYC with AVX512_BF16 and no AMX (experiments/README,
    "bfloat16 on a CPU"); without oneDNN it is not measured, so float32 stays."""
    return not onednn_enabled() or "amx_bf16" in cpu.cpu_flags()


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
    found = devices.gpus()
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
    jit = mode == "on" or (mode == "auto" and bool(devices.gpus()))
    if jit and deterministic:
        # Keras compiles nothing with XLA under op determinism (not every op has a
        # deterministic XLA kernel); say so, and record what really runs.
        print("warning: --deterministic turns XLA off (Keras does not compile with XLA "
              "under op determinism); use --jit off to silence this", file=sys.stderr)
        return False
    return jit
