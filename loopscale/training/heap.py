"""Keep freed memory in the process heap, so that a training step reuses its pages.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised by frees up to
32 MiB) from fresh pages of its own mapping, and hands the top of the heap back to the kernel
once more than the trim threshold lies free there. A CPU training step allocates and frees the
same large activations every step (logits, attention weights, MLP activations), so under these
defaults every step faults in thousands of zeroed pages: 1,200 to 5,700 minor page faults per
step at the default grid's widths, measured, and about a sixth of a step's time. Fixing both
thresholds (mmap at its 32 MiB maximum, trim at 1 GiB) keeps those pages mapped: the process
holds on to its peak heap instead of returning it between steps. bench/train_throughput.py
measures the effect, process against process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns whether both settings took; False off Linux or without glibc's ``mallopt``, where
    nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
