"""Split-K epilogues: sum the float32 partial products of every K split, add the bias, cast.

Split programs write disjoint slices of a ``(SPLIT, M, N)`` workspace (a split with no K tile
writes zeros), so nothing needs zeroing first and the sum is deterministic. Two ways to sum:

- ``reduce_partials``: a second launch (two launches per product, where atomics would need
  three: zero, accumulate, cast);
- in the kernel itself (``split_counters``): each program bumps its tile's arrival counter after
  writing its slice, and the last to arrive sums every slice in split order (so the result is the
  same whichever arrives last) and resets the counter to zero for the next call. One launch; a
  decode GEMV of ~20 µs saves the second launch's ~1.5-2.5 µs (the half2 GEMV; the W8A8 int8 GEMV
  does the same with int32 slices). The counters live per device and
  are only ever reset by the kernels, so calls that share them must not run concurrently on two
  streams (one stream, or one CUDA graph replayed after another, is fine).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def split_tiles(K, BK: tl.constexpr, SPLIT_K: tl.constexpr, pid_k):
    """The K tiles ``[first, last)`` of split ``pid_k``: ``cdiv(K, BK)`` tiles dealt out in runs of
    equal length (the last splits may get fewer, or none: an empty range adds nothing)."""
    k_tiles = tl.cdiv(K, BK)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    first = pid_k * per_split
    return first, tl.minimum(first + per_split, k_tiles)


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


@triton.jit
def store_result(total, out_ptr, ws_ptr, cnt_ptr, b_ptr, out_offs, ws_offs, ws_stride, bias_offs,
                 mask, pid_k, tile_id, SPLIT_K: tl.constexpr, SELF_REDUCE: tl.constexpr,
                 HAS_BIAS: tl.constexpr):
    """A program's float32 result ``total`` into the output: directly (one split, bias added),
    as its slice ``ws[pid_k]`` of the workspace (summed by ``reduce_partials`` afterwards), or
    (``SELF_REDUCE``) as its slice and then, if it is the last split to arrive at output tile
    ``tile_id``, the sum of every slice in split order plus the bias. Offsets share ``total``'s
    shape (``bias_offs`` may broadcast); slice ``s`` starts at ``ws_ptr + s·ws_stride``."""
    if SPLIT_K == 1:
        if HAS_BIAS:
            total += tl.load(b_ptr + bias_offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ws_ptr + pid_k * ws_stride + ws_offs, total, mask=mask)
        if SELF_REDUCE:
            tl.debug_barrier()  # every thread's slice is written before the counter moves
            arrived = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:
                total = tl.zeros_like(total)
                for s in tl.static_range(SPLIT_K):
                    total += tl.load(ws_ptr + s * ws_stride + ws_offs, mask=mask, other=0.0,
                                     cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(b_ptr + bias_offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=mask)
                tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")


class SplitOutput:
    """The buffers of one split-K product ``(M, N)``: the output, the float32 workspace
    ``(split, M, N)`` and the counters when the kernel sums the splits itself. ``finish`` returns
    the output, after a second launch where the kernel could not sum (no counters)."""

    def __init__(self, m: int, n: int, dtype: torch.dtype, device: torch.device, split: int,
                 tiles: int, self_reduce: bool = True):
        self.out = torch.empty(m, n, dtype=dtype, device=device)
        self.split, self.ws, self.counters = split, self.out, None
        if split > 1:
            self.ws = torch.empty(split, m, n, dtype=torch.float32, device=device)
            self.counters = split_counters(device, tiles) if self_reduce else None
        self.self_reduce = self.counters is not None

    @property
    def counters_or_dummy(self) -> torch.Tensor:
        return self.counters if self.counters is not None else self.out

    def finish(self, bias, dtype: torch.dtype) -> torch.Tensor:
        if self.split == 1 or self.self_reduce:
            return self.out
        return reduce_partials(self.ws, bias, dtype)


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
_OUTGROWN: list = []  # counters replaced by larger ones: kept alive, graphs may still use them


def split_counters(device: torch.device, tiles: int) -> torch.Tensor | None:
    """Zeroed int32 arrival counters for ``tiles`` output tiles, kept per device and left zero by
    every kernel that uses them. None while a CUDA graph is being captured and none large enough
    exist yet (an allocation there would belong to the graph's pool): the caller then sums in a
    second launch instead. A buffer is never freed: CUDA graphs captured earlier keep its address,
    so when a larger one is needed the old one is kept alive beside it."""
    key = (device.type, device.index)
    have = _COUNTERS.get(key)
    if have is None or have.numel() < tiles:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        if have is not None:
            _OUTGROWN.append(have)
        size = max(tiles, 16384)  # a 256k vocabulary in 16-row tiles
        have = _COUNTERS[key] = torch.zeros(size, dtype=torch.int32, device=device)
    return have
