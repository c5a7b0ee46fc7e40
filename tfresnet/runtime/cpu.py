"""The CPU's instruction-set class, and the oneDNN switch set from it before TensorFlow loads."""

import functools
import os
import platform
import sys

# TensorFlow (2.9 on) runs its x86 kernels through oneDNN by default only on CPUs with
# "neural-network-focused hardware features such as AVX512_VNNI, AVX512_BF16, AMX" (its
# release notes); on an AVX2 CPU it falls back to its Eigen kernels, built for AVX without
# FMA. There oneDNN trained ResNet-18 1.7-2.1x as fast at every width measured
# (experiments/README.md, "AVX2 CPUs"), so tfresnet turns it on wherever the CPU has AVX2.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
TENSORFLOW_ONEDNN_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
                           "amx_int8")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags as Linux lists them (empty where there is no such file)."""
    try:
        with open(path) as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_class(flags=None):
    """``avx512``, ``avx2`` or ``other``: the instruction-set class speed figures are quoted for."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "other"


def decide_onednn(environ, flags, system, machine, tensorflow_loaded):
    """Why oneDNN is on or off, and the ``TF_ENABLE_ONEDNN_OPTS`` value to set (None: leave
    it): ``1`` on a Linux x86-64 CPU with AVX2 where the user has not chosen and TensorFlow
    is not loaded yet (it reads the variable once, at import). It is TensorFlow's own choice
    where the CPU has one of `TENSORFLOW_ONEDNN_FLAGS`, and set there too, so that
    `tfresnet.runtime.precision.onednn_enabled` reads the state from the variable."""
    if ONEDNN_VARIABLE in environ:
        return f"{ONEDNN_VARIABLE}={environ[ONEDNN_VARIABLE]}", None
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return "TensorFlow's default on this platform", None
    if cpu_class(flags) == "other":
        return "TensorFlow's default on a CPU without AVX2", None
    native = bool(flags & set(TENSORFLOW_ONEDNN_FLAGS))
    if tensorflow_loaded:
        return ("TensorFlow's default" + ("" if native else (
            f", as it was imported before tfresnet (with {ONEDNN_VARIABLE}=1 set before "
            f"importing it, this CPU trains about twice as fast)"))), None
    return ("TensorFlow's default on this CPU" if native else
            "tfresnet's default on x86 CPUs with AVX2"), "1"


@functools.cache
def onednn_choice():
    """Decides oneDNN once, setting the variable where `decide_onednn` says; returns why,
    for the start-up line. ``import tfresnet`` calls it before importing TensorFlow."""
    reason, value = decide_onednn(os.environ, cpu_flags(), platform.system(),
                                  platform.machine(), "tensorflow" in sys.modules)
    if value is not None:
        os.environ[ONEDNN_VARIABLE] = value
    return reason
