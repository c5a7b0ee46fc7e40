"""What a record says it ran on: the device, the library versions, the source commit."""

import functools
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from tfresnet.compat import VERSION
from tfresnet.runtime import cpu, devices, precision

# Optional libraries whose version a record names when they are installed.
OPTIONAL_LIBRARIES = ("keras-hub", "keras-tuner", "tf2onnx", "onnx", "onnxruntime",
                      "ai-edge-litert")


def describe_device():
    """A short description of the accelerator (or CPU) this process computes on."""
    found = devices.gpus()
    if found:
        details = tf.config.experimental.get_device_details(found[0])
        return f"{len(found)}x {details.get('device_name', 'GPU')}"
    isa = {"avx512": "AVX-512", "avx2": "AVX2", "other": "no AVX2"}[cpu.cpu_class()]
    onednn = "on" if precision.onednn_enabled() else "off"
    return (f"CPU ({platform.processor() or platform.machine()}, {isa}, {os.cpu_count()} "
            f"cores; oneDNN {onednn}: {cpu.onednn_choice()})")


def versions():
    """Library versions for summaries and benchmark records: tfresnet's (with the git
    commit when it runs from a checkout), the core libraries' and the optional ones
    installed."""
    from importlib import metadata

    import cv2

    found = {"tfresnet": VERSION}
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
