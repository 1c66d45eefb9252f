"""The C allocator keeps a batch's freed memory for the next one (glibc, as in the images)."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from streamer.serve.allocator import retain_freed_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _free_heap() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def test_freed_blocks_of_a_few_megabytes_stay_mapped_for_the_next_batch() -> None:
    assert retain_freed_memory(0) is False  # (0: the C library's defaults, untouched)
    assert retain_freed_memory(256) is True
    block = np.ones(8 << 20, dtype=np.uint8)  # 8 MiB: from the heap now, not its own mapping
    del block
    assert _free_heap() >= 8 << 20  # freed, and kept rather than trimmed away
