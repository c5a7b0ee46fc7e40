"""tfresnet: train, tune and inspect ResNets on CIFAR and image folders with Keras 3."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfresnet import losses, models  # noqa: E402  (registers every serializable class)
from tfresnet.models import get_model, list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["get_model", "list_models", "losses", "models"]
