"""Batch-1 GEMV that works plane by plane (see ``triton_xplanes``): fewer instructions per code.

The 4-bit decode GEMV is bound by instructions per code, not by bytes (int8 runs as fast as
int4 with twice the bytes). Here code ``j`` of each word is masked in place and OR-ed into the
mantissa of 2^23, giving ``2^23 + q·2^p`` exactly; subtracting ``2^23 + zero·2^p`` (one constant
per row, plane and tile) gives ``(q - zero)·2^p`` exactly, and an FMA with the pre-scaled
``x·2^-p`` accumulates ``(q - zero)·x``. Per code: one logic op, one add, one FMA; no shifts,
no shuffles. The scale is applied once per row and tile (a tile lies in one group).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dequant import load_scale_zero
from .triton_splitk import reduce_partials, split_tiles
from .triton_xplanes import x_planes


@triton.jit
def _gemv_planes_kernel(
    xp_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    N, K, KW, group, stride_wn, stride_sn, stride_zn,
    BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UNROLL: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    EPW: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = EPW // 2
    BW: tl.constexpr = BK // EPW
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    n_mask = rn < N
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    w_end = tl.minimum(KW, last * BW)  # this split's words end here
    acc = tl.zeros((BN,), tl.float32)
    for step in range(first, last, UNROLL):
        for u in tl.static_range(UNROLL):
            tile = step + u
            # A tile past `last` loads nothing: its x planes load as zeros and add nothing.
            live = n_mask & ((tl.zeros((BN,), tl.int32) + tile) < last)
            rw = tile * BW + tl.arange(0, BW)
            words = tl.load(wq_ptr + rn[:, None] * stride_wn + rw[None, :],
                            mask=live[:, None] & (rw < KW)[None, :], other=0)
            high = words >> 16  # arithmetic shift: the sign bits it drags in are masked below
            g = (tile * BK) // group
            scale, zero = load_scale_zero(s_ptr, z_ptr, rn, live, g, stride_sn, stride_zn, BITS, BN,
                                          HAS_ZERO)
            dot_qz = tl.zeros((BN, BW), tl.float32)
            for j in tl.static_range(EPW):
                if j < HALF:
                    half = words
                else:
                    half = high
                q_high = ((half & (CODE_MASK << ((j % HALF) * BITS))) | 0x4B000000).to(
                    tl.float32, bitcast=True)
                z_high = 8388608.0 + zero * (1 << ((j % HALF) * BITS))
                xj = tl.load(xp_ptr + j * KW + rw, mask=rw < w_end, other=0.0)
                dot_qz += (q_high - z_high[:, None]) * xj[None, :]
            acc += tl.sum(dot_qz, axis=1) * scale
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rn, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:  # partial sums into the (SPLIT_K, 1, N) workspace; bias comes with the reduction
        tl.store(out_ptr + pid_k * N + rn, acc, mask=n_mask)


def gemv_planes(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (1, K)`` times the layer's weight → ``(1, N)`` in ``x``'s dtype."""
    bk = layout.block_k(cfg.block_k)
    split = cfg.split_k
    xp = x_planes(x, layout.bits, layout.kw, torch.float32)
    if split == 1:
        out = torch.empty(1, layout.n, dtype=x.dtype, device=x.device)
    else:
        out = torch.empty(split, 1, layout.n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(layout.n, cfg.block_n), split)
    _gemv_planes_kernel[grid](
        xp, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, out,
        layout.n, layout.k, layout.kw, layout.group_for(bk),
        layout.packed.stride(0), layout.stride_s, layout.stride_z,
        BITS=layout.bits, BN=cfg.block_n, BK=bk, UNROLL=cfg.unroll, SPLIT_K=split,
        HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out if split == 1 else reduce_partials(out, bias, x.dtype)
