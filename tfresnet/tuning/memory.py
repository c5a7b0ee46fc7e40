"""Process memory across many trials in one process: glibc's heap, Keras' global state."""

import ctypes
import gc
import os
from pathlib import Path

import keras


def limit_heap_arenas(arenas=2):
    """Caps glibc's malloc arenas (``mallopt(M_ARENA_MAX)``; a no-op elsewhere). By default
    every thread that allocates may get an arena of its own, and TensorFlow's thread pools
    left each trial's freed memory spread over them: the search grew 5-7 MB per trial; with
    2 arenas it stays flat after the first trial (experiments/README.md)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def release_memory():
    """Frees what a finished trial left behind: Keras' global state, Python's reference
    cycles, and the free pages of the C heap (glibc's ``malloc_trim``; a no-op elsewhere),
    which otherwise stay with the process after each trial's graphs are freed."""
    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_memory_mb():
    """Current resident memory of this process (Linux /proc), in MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
