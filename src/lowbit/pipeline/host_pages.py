"""Give back the host pages of float weights that the walk has replaced by quantized layers.

A model loaded from safetensors on the CPU keeps its weights in a private memory map of the
file: the pages become resident as they are read (the target checks read them all before the
walk starts) and stay resident, counted in the process's memory, while anything maps them.
Once a block's linears are swapped for quantized ones, their float weights are never read
again, but the map is the file's, so nothing frees them: on SmolLM2 that is 0.44 GiB of float
blocks resident at the end of a walk that needs one block at a time. ``madvise(DONTNEED)`` on
the pages that lie wholly inside such a weight drops them; a later read of the same address
(a caller still holding the old tensor) faults the page back in from the file, so it is safe
for clean pages and for pages the walk wrote to (those read back as the file's bytes, which
only the released weight, no longer part of the model, can observe). Pages shared with a
neighbouring tensor are left alone.

Weights in ordinary (anonymous) memory need none of this: they are freed with their last
reference. Only Linux is handled; elsewhere this does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
from typing import Iterable

import torch

from .host_allocator import c_library

_MADV_DONTNEED = 4  # from <sys/mman.h> on Linux


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's private file-backed mappings (``/proc/self/maps``)."""
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[5].startswith("/") or parts[1][3] != "p":
                    continue
                lo, hi = parts[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


def _madvise():
    fn = getattr(c_library(), "madvise", None)
    if fn is not None:
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        fn.restype = ctypes.c_int
    return fn


def release_file_backed(tensors: Iterable[torch.Tensor], keep: Iterable[torch.Tensor] = ()) -> int:
    """Drop the resident pages inside each CPU tensor (contiguous ones) that is memory-mapped
    from a file, except pages that also hold any tensor of ``keep``. Returns bytes released."""
    madvise = _madvise()
    mappings = _file_mappings() if madvise is not None else []
    if not mappings:
        return 0
    page = mmap.PAGESIZE
    kept = [_byte_range(t) for t in keep if t.device.type == "cpu"]
    released, done = 0, set()
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous():
            continue
        lo, hi = _byte_range(t)
        if lo in done or hi == lo or not any(a <= lo and hi <= b for a, b in mappings):
            continue
        done.add(lo)
        start, end = -(-lo // page) * page, hi // page * page
        if end <= start or any(a < end and start < b for a, b in kept):
            continue
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += end - start
    return released


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    """The bytes a tensor's elements occupy (its whole storage if it is not contiguous)."""
    if t.is_contiguous():
        return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    s = t.untyped_storage()
    return s.data_ptr(), s.data_ptr() + s.nbytes()
