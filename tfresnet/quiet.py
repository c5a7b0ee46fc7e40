"""Silences TensorFlow's native start-up chatter (oneDNN notices, CUDA probing).

It is written straight to file descriptor 2 before any log setting applies. Python
exceptions still propagate; ``TFRESNET_VERBOSE=1`` shows everything.
"""

import contextlib
import os


@contextlib.contextmanager
def native_stderr_silenced():
    """Points file descriptor 2 at /dev/null for the duration of the block."""
    if os.environ.get("TFRESNET_VERBOSE"):
        yield
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
