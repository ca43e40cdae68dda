"""Tensor-core weight-only kernel for small and mid batches, dequantizing in "planes".

Same product as ``triton_mma`` (``out^T = W · x^T``, split-K optional) with cheaper dequantization:
code ``j`` of every word in a tile is masked in place and OR-ed into 2^23's mantissa (see
``triton_gemv_planes``), so plane ``j`` is the ``(BN, BK/codes_per_word)`` matrix
``(q - zero)·2^p``, exact in bf16. Each plane meets the matching plane of x (``triton_xplanes``:
regrouped once per call and pre-scaled by ``2^-p``, exact; gathering x inside the kernel instead
measured 10-30% slower) in its own dot; the scale multiplies the tile's partial product once per
row (one group per tile). Per code: one logic op, one add, half a conversion; no shuffles to
rebuild input order.

Needs 16 words per row and tile (``tl.dot``'s minimum K) inside one group: 4-bit groups of 128
or more, 8-bit groups of 64 or more (per-channel included); other formats use ``triton_mma``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dequant import load_scale_zero
from .triton_mma import mma_program
from .triton_splitk import SplitOutput, split_tiles, store_result
from .triton_xplanes import x_planes


@triton.jit
def _mma_planes_kernel(
    xp_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
    M, N, K, KW, group, stride_wn, stride_sn, stride_zn, stride_om,
    BITS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    EPW: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = EPW // 2
    BW: tl.constexpr = BK // EPW
    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    rn, rm, n_mask, m_mask, pid_k = mma_program(N, M, BN, BM)
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    acc = tl.zeros((BN, BM), tl.float32)
    for tile in range(first, last):
        rw = tile * BW + tl.arange(0, BW)
        words = tl.load(wq_ptr + rn[:, None] * stride_wn + rw[None, :],
                        mask=n_mask[:, None] & (rw < KW)[None, :], other=0)
        high = words >> 16  # arithmetic shift: the sign bits it drags in are masked below
        g = (tile * BK) // group
        scale, zero = load_scale_zero(s_ptr, z_ptr, rn, n_mask, g, stride_sn, stride_zn, BITS, BN,
                                      HAS_ZERO)
        part = tl.zeros((BN, BM), tl.float32)
        for j in tl.static_range(EPW):
            if j < HALF:
                half = words
            else:
                half = high
            q_shifted = ((half & (CODE_MASK << ((j % HALF) * BITS))) | 0x4B000000).to(
                tl.float32, bitcast=True)
            plane = (q_shifted - (8388608.0 + zero * (1 << ((j % HALF) * BITS)))[:, None]).to(
                xp_ptr.dtype.element_ty)
            xt = tl.load(xp_ptr + (j * M + rm[None, :]) * KW + rw[:, None],
                         mask=(rw < KW)[:, None] & m_mask[None, :], other=0.0)
            part = tl.dot(plane, xt, part)
        acc += part * scale[:, None]
    # Splits are summed by a second launch: summing in the kernel (as the half2 GEMV does) measured
    # ~1.5 µs slower here (bench/gemv_sweep.py, M = 2-16).
    store_result(acc, out_ptr, ws_ptr, ws_ptr, b_ptr, rm[None, :] * stride_om + rn[:, None],
                 rm[None, :] * N + rn[:, None], M * N, rn[:, None],
                 n_mask[:, None] & m_mask[None, :], pid_k, 0, SPLIT_K, False, HAS_BIAS)


def planes_fit(layout, block_k: int) -> bool:
    """Whether a K tile of ``block_k`` gives 16 words per row inside one group."""
    bk = layout.block_k(block_k)
    return bk * layout.bits // 32 >= 16


def mma_planes(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (M, K)`` (any strides) times the layer's weight → ``(M, N)`` in ``x``'s dtype."""
    if not planes_fit(layout, cfg.block_k):
        raise ValueError(f"int{layout.bits} group {layout.group_size}: K tile too narrow for planes")
    m = x.shape[0]
    bk = layout.block_k(cfg.block_k)
    split = cfg.split_k
    xp = x_planes(x, layout.bits, layout.kw, x.dtype)
    grid = (triton.cdiv(layout.n, cfg.block_n), triton.cdiv(m, cfg.block_m), split)
    res = SplitOutput(m, layout.n, x.dtype, x.device, split, grid[0] * grid[1], self_reduce=False)
    _mma_planes_kernel[grid](
        xp, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, res.out, res.ws,
        m, layout.n, layout.k, layout.kw, layout.group_for(bk), layout.packed.stride(0),
        layout.stride_s, layout.stride_z, res.out.stride(0),
        BITS=layout.bits, BN=cfg.block_n, BM=cfg.block_m, BK=bk, SPLIT_K=split,
        HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return res.finish(bias, x.dtype)
