"""Triton tensor-core kernel for weight-only layers, any batch: dequantize in registers, then dot.

The product is computed transposed, ``out^T (N, M) = W (N, K) · x^T (K, M)``: the dequantized
weight tile is the dot's first operand, which Hopper's tensor cores may take straight from
registers, and a small batch only has to fill the dot's narrow side (16 columns at M = 1..16).
A split-K grid axis adds parallelism when N/BN programs would not fill the GPU (decode); partial
sums then go to a float32 workspace and ``triton_splitk`` adds them up.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_dequant import load_codes_minus_zero
from .triton_splitk import reduce_partials, split_tiles


@triton.jit
def mma_program(N, M, BN: tl.constexpr, BM: tl.constexpr):
    """This program's output rows ``rn`` (grid axis 0), batch rows ``rm`` (axis 1), their masks
    and its K split (axis 2): the grid of every transposed tensor-core kernel here."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    return rn, rm, rn < N, rm < M, tl.program_id(2)


@triton.jit
def _mma_kernel(
    x_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    M, N, K, KW, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn, stride_om,
    BITS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    rn, rm, n_mask, m_mask, pid_k = mma_program(N, M, BN, BM)
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    acc = tl.zeros((BN, BM), tl.float32)
    for tile in range(first, last):
        qz, scale = load_codes_minus_zero(wq_ptr, s_ptr, z_ptr, rn, n_mask, tile, KW, group,
                                          stride_wn, stride_sn, stride_zn, BITS, BN, BK, HAS_ZERO)
        w = (qz * scale[:, None]).to(x_ptr.dtype.element_ty)
        rk = tile * BK + tl.arange(0, BK)
        xt = tl.load(x_ptr + rm[None, :] * stride_xm + rk[:, None] * stride_xk,
                     mask=(rk < K)[:, None] & m_mask[None, :], other=0.0)
        acc = tl.dot(w, xt, acc)
    mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rm[None, :] * stride_om + rn[:, None], acc.to(out_ptr.dtype.element_ty),
                 mask=mask)
    else:  # partial sums into the (SPLIT_K, M, N) workspace; bias comes with the reduction
        tl.store(out_ptr + pid_k * M * N + rm[None, :] * N + rn[:, None], acc, mask=mask)


def mma(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (M, K)`` (any strides) times the layer's weight → ``(M, N)`` in ``x``'s dtype."""
    m = x.shape[0]
    bk = layout.block_k(cfg.block_k)
    split = cfg.split_k
    if split == 1:
        out = torch.empty(m, layout.n, dtype=x.dtype, device=x.device)
    else:
        out = torch.empty(split, m, layout.n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(layout.n, cfg.block_n), triton.cdiv(m, cfg.block_m), split)
    _mma_kernel[grid](
        x, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, out,
        m, layout.n, layout.k, layout.kw, layout.group_for(bk), x.stride(0), x.stride(1),
        layout.packed.stride(0), layout.stride_s, layout.stride_z, out.stride(-2),
        BITS=layout.bits, BN=cfg.block_n, BM=cfg.block_m, BK=bk, SPLIT_K=split,
        HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out if split == 1 else reduce_partials(out, bias, x.dtype)
