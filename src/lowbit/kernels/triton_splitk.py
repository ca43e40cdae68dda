"""Split-K epilogue: sum the float32 partial products of every K split, add the bias, cast.

Split programs write disjoint slices of a ``(SPLIT, M, N)`` workspace (a split with no K tile
writes zeros), so nothing needs zeroing first and the sum is deterministic: two launches per
product, where atomics would need three (zero, accumulate, cast).
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
