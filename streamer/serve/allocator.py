"""The C allocator under torch and numpy: keep freed memory for the next batch.

A batch's tensors are a few MB each (logits, gathered states, outputs). glibc serves blocks of
that size with ``mmap`` and gives them back to the kernel when they are freed, or trims the heap
once more than a few MB of it is free, so the next batch's tensors fault in fresh zeroed pages,
which cost more in a virtual machine than the arithmetic done in them (a profile of the
next-event path, ``docs/performance.md``). :func:`retain_freed_memory` raises both thresholds
with ``mallopt``: blocks below 32 MiB come from the heap, and up to ``megabytes`` of freed heap
stay mapped for reuse. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_memory"]

log = logging.getLogger("streamer.worker")

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks this large or larger still get their own mapping (glibc's own dynamic ceiling).
_MMAP_FROM = 32 << 20


def retain_freed_memory(megabytes: int) -> bool:
    """Keep up to ``megabytes`` of freed memory mapped (0: leave glibc's defaults). True when
    the allocator took the settings."""
    if megabytes <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # (not glibc: musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM)) and bool(
        mallopt(_M_TRIM_THRESHOLD, megabytes << 20)
    )
    if not ok:
        log.warning("the C allocator refused its thresholds; freed memory goes back as usual")
    return ok
