"""tfresnet: train, tune and inspect ResNets on CIFAR and image folders with Keras 3."""

import os

# The one environment variable importing tfresnet sets (only where unset): TensorFlow's
# C++ log. GPUs are probed, and a Slurm task's share of them chosen, by the first
# `tfresnet.training.runtime.gpus` call, just before CUDA starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfresnet.quiet import native_stderr_silenced  # noqa: E402

with native_stderr_silenced():  # importing TensorFlow prints CUDA stub lines from C++
    import tensorflow  # noqa: F401

from tfresnet import losses, models  # noqa: E402  (registers every serializable class)
from tfresnet.api import Run, classify, draw, fit  # noqa: E402
from tfresnet.config import TrainConfig  # noqa: E402
from tfresnet.data import load_dataset  # noqa: E402
from tfresnet.models import get_model, list_models  # noqa: E402
from tfresnet.training.run_folder import load_model  # noqa: E402

# Follows the on-disk formats: 0.2 renamed the saved model's parts, 0.3 added the photo
# models' evaluation crop to it, 0.4 put all preprocessing in its `ImagePreprocessor`
# (files of every version load: `tfresnet.compat`).
__version__ = "0.4.0"
__all__ = ["Run", "TrainConfig", "classify", "draw", "fit", "get_model", "list_models",
           "load_dataset", "load_model", "losses", "models"]
