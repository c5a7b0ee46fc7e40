"""tfresnet: train, tune and inspect ResNets on CIFAR and image folders with Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfresnet.quiet import native_stderr_silenced  # noqa: E402

with native_stderr_silenced():
    import tensorflow

    tensorflow.config.list_physical_devices("GPU")  # CUDA probing prints here, once

from tfresnet import losses, models  # noqa: E402  (registers every serializable class)
from tfresnet.models import get_model, list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["get_model", "list_models", "losses", "models"]
