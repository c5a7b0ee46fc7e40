"""tfresnet: train, tune and inspect ResNets on CIFAR and image folders with Keras 3."""

import os

# The environment variables importing tfresnet sets, only where unset and only before
# TensorFlow loads: TensorFlow's C++ log, and its oneDNN kernels on x86 CPUs with AVX2
# (`tfresnet.runtime.cpu`: TensorFlow turns them on by itself only on CPUs with AVX512_VNNI,
# AVX512_BF16 or AMX, and its own kernels trained ResNet-18 at about half the speed). GPUs
# are probed, and a Slurm task's share of them chosen, by the first
# `tfresnet.runtime.devices.gpus` call, just before CUDA starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfresnet.runtime.cpu import onednn_choice  # noqa: E402

onednn_choice()

from tfresnet.quiet import native_stderr_silenced  # noqa: E402

with native_stderr_silenced():  # importing TensorFlow prints CUDA stub lines from C++
    import tensorflow  # noqa: F401

from tfresnet import losses, models  # noqa: E402  (registers every serializable class)
from tfresnet.api import Run, classify, draw, fit  # noqa: E402
from tfresnet.compat import VERSION as __version__  # noqa: E402, F401
from tfresnet.config import TrainConfig  # noqa: E402
from tfresnet.data import load_dataset  # noqa: E402
from tfresnet.models import get_model, list_models  # noqa: E402
from tfresnet.runs.run_folder import load_model  # noqa: E402

__all__ = ["Run", "TrainConfig", "classify", "draw", "fit", "get_model", "list_models",
           "load_dataset", "load_model", "losses", "models"]
