"""tfresnet: train, tune and inspect ResNets on CIFAR and image folders with Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfresnet.quiet import native_stderr_silenced  # noqa: E402

with native_stderr_silenced():
    from tfresnet.training.runtime import assign_slurm_gpus

    assign_slurm_gpus()  # before CUDA starts: it reads CUDA_VISIBLE_DEVICES once
    import tensorflow

    tensorflow.config.list_physical_devices("GPU")  # CUDA probing prints here, once

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
