"""Triton GEMV for weight-only layers at batch 1 (decode): no tensor cores, split-K optional.

Each program owns ``BN`` output rows and a contiguous run of K tiles, ``UNROLL`` tiles per loop
step: their loads are independent, so they are all in flight before the first is used (a
decode GEMV is bound by how many bytes are in flight, not by arithmetic). Per weight it spends
one shift, one logic op, one add and one multiply-add (``(q - zero)·x``); the scale is applied
once per row and tile, after the reduction over the tile, which is exact because a tile lies in
one group.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dequant import load_codes_minus_zero
from .triton_splitk import reduce_partials, split_tiles


@triton.jit
def _gemv_kernel(
    x_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    N, K, KW, group, stride_xk, stride_wn, stride_sn, stride_zn,
    BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UNROLL: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    n_mask = rn < N
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    k_end = tl.minimum(K, last * BK)  # this split's inputs end here
    acc = tl.zeros((BN,), tl.float32)
    for step in range(first, last, UNROLL):
        for u in tl.static_range(UNROLL):
            tile = step + u
            # A tile past `last` loads nothing: zero codes times zero x add nothing.
            live = n_mask & ((tl.zeros((BN,), tl.int32) + tile) < last)
            qz, scale = load_codes_minus_zero(wq_ptr, s_ptr, z_ptr, rn, live, tile, KW, group,
                                              stride_wn, stride_sn, stride_zn, BITS, BN, BK,
                                              HAS_ZERO)
            rk = tile * BK + tl.arange(0, BK)
            x = tl.load(x_ptr + rk * stride_xk, mask=rk < k_end, other=0.0).to(tl.float32)
            acc += tl.sum(qz * x[None, :], axis=1) * scale
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rn, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:  # partial sums into the (SPLIT_K, 1, N) workspace; bias comes with the reduction
        tl.store(out_ptr + pid_k * N + rn, acc, mask=n_mask)


def gemv(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (1, K)`` times the layer's weight → ``(1, N)`` in ``x``'s dtype."""
    bk = layout.block_k(cfg.block_k)
    split = cfg.split_k
    if split == 1:
        out = torch.empty(1, layout.n, dtype=x.dtype, device=x.device)
    else:
        out = torch.empty(split, 1, layout.n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(layout.n, cfg.block_n), split)
    _gemv_kernel[grid](
        x, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, out,
        layout.n, layout.k, layout.kw, layout.group_for(bk), x.stride(1),
        layout.packed.stride(0), layout.stride_s, layout.stride_z,
        BITS=layout.bits, BN=cfg.block_n, BK=bk, UNROLL=cfg.unroll, SPLIT_K=split,
        HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out if split == 1 else reduce_partials(out, bias, x.dtype)
