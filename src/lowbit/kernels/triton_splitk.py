"""Split-K epilogues: sum the float32 partial products of every K split, add the bias, cast.

Split programs write disjoint slices of a ``(SPLIT, M, N)`` workspace (a split with no K tile
writes zeros), so nothing needs zeroing first and the sum is deterministic. Two ways to sum:

- ``reduce_partials``: a second launch (two launches per product, where atomics would need
  three: zero, accumulate, cast);
- in the kernel itself (``split_counters``): each program bumps its tile's arrival counter after
  writing its slice, and the last to arrive sums every slice in split order (so the result is the
  same whichever arrives last) and resets the counter to zero for the next call. One launch; a
  decode GEMV of ~20 µs saves the second launch's ~1.5-2.5 µs. The counters live per device and
  are only ever reset by the kernels, so calls that share them must not run concurrently on two
  streams (one stream, or one CUDA graph replayed after another, is fine).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reduce_kernel(ws_ptr, b_ptr, out_ptr, MN, N, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def reduce_partials(ws: torch.Tensor, bias, dtype: torch.dtype) -> torch.Tensor:
    """``ws (SPLIT, M, N)`` float32 → ``(M, N)`` in ``dtype``, plus bias."""
    split, m, n = ws.shape
    out = torch.empty(m, n, dtype=dtype, device=ws.device)
    block = 1024
    _reduce_kernel[(triton.cdiv(m * n, block),)](
        ws, bias if bias is not None else ws, out, m * n, n, SPLIT=split, BLOCK=block,
        HAS_BIAS=bias is not None, num_warps=4)
    return out


_COUNTERS: dict = {}


def split_counters(device: torch.device, tiles: int) -> torch.Tensor | None:
    """Zeroed int32 arrival counters for ``tiles`` output tiles, kept per device and left zero by
    every kernel that uses them. None while a CUDA graph is being captured and none exist yet
    (an allocation there would belong to the graph's pool): the caller then sums in a second
    launch instead."""
    key = (device.type, device.index)
    have = _COUNTERS.get(key)
    if have is None or have.numel() < tiles:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        have = _COUNTERS[key] = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
    return have
