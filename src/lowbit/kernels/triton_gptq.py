"""GPTQ's inner column loop as one Triton program per tile of rows, one launch per lazy block.

Within a lazy block of ``C`` columns (128 by default) GPTQ rounds column ``i``, divides its
error by ``U[i, i]`` and subtracts ``err ⊗ U[i, i:]`` from the columns after it. Rows never
interact there, so each program keeps a ``(BLOCK_R, C)`` tile of ``W`` in registers and walks
the ``C`` columns itself. In PyTorch the same loop is a dozen tiny kernel launches per column,
which made GPTQ launch-bound on a GPU (about 7 s of a Llama-3-8B block's 10 s on an H100).

Numerics match ``algorithms.gptq``'s PyTorch loop: codes are rounded from a float64 quotient
``w / scale`` (half to even, as ``torch.round``) and the dequantized value is formed in float32
from float32 copies of scale and zero. The error division and the rank-1 update are float32;
they may differ from PyTorch's by an ulp (fused multiply-add), as two BLAS libraries would.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _round_half_even(x):
    """``torch.round`` for float64 ``x``: nearest integer, ties to even (no libdevice, so the
    interpreter runs it too)."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _round_half_even_kernel(X, Y, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    tl.store(Y + i, _round_half_even(tl.load(X + i, mask=m)), mask=m)


def round_half_even_into(x: torch.Tensor) -> torch.Tensor:
    """``_round_half_even`` on a small float64 vector (for tests of the helper itself)."""
    y = torch.empty_like(x)
    _round_half_even_kernel[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    return y


@triton.jit
def _gptq_block_kernel(
    W, U, CODES, ERR, SCALE_D, ZERO_D, SCALE_F, ZERO_F, COL_GROUP,
    rows, ncols, col0, qmax,
    stride_wr, stride_wc, stride_ur, stride_uc, stride_cr, stride_cc, stride_er, stride_ec,
    stride_sr, stride_sg,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    rmask = r < rows
    cmask = c < ncols
    tile = tl.load(W + r[:, None] * stride_wr + (col0 + c)[None, :] * stride_wc,
                   mask=rmask[:, None] & cmask[None, :], other=0.0)
    for i in range(0, ncols):
        col = col0 + i
        # Column i of the register tile: a masked row sum (a register tile cannot be indexed).
        w = tl.sum(tl.where(c[None, :] == i, tile, 0.0), axis=1)
        g = tl.load(COL_GROUP + col)
        s_off = r * stride_sr + g * stride_sg
        s_d = tl.load(SCALE_D + s_off, mask=rmask, other=1.0)
        z_d = tl.load(ZERO_D + s_off, mask=rmask, other=0.0)
        s_f = tl.load(SCALE_F + s_off, mask=rmask, other=1.0)
        z_f = tl.load(ZERO_F + s_off, mask=rmask, other=0.0)
        q = _round_half_even(w.to(tl.float64) / s_d) + z_d
        q = tl.minimum(tl.maximum(q, 0.0), qmax).to(tl.float32)
        dq = (q - z_f) * s_f
        u_ii = tl.load(U + col * stride_ur + col * stride_uc)
        err = (w - dq) / u_ii
        u_row = tl.load(U + col * stride_ur + (col0 + c) * stride_uc, mask=cmask & (c >= i), other=0.0)
        tile = tile - err[:, None] * u_row[None, :]
        tl.store(CODES + r * stride_cr + col * stride_cc, q, mask=rmask)
        tl.store(ERR + r * stride_er + i * stride_ec, err, mask=rmask)


def gptq_block_columns(W: torch.Tensor, U: torch.Tensor, codes: torch.Tensor, err: torch.Tensor,
                       scale_d: torch.Tensor, zero_d: torch.Tensor, scale_f: torch.Tensor,
                       zero_f: torch.Tensor, col_group: torch.Tensor, col0: int, ncols: int,
                       qmax: int, block_r: int = 16) -> None:
    """Round columns ``col0 .. col0+ncols`` of ``W (out, in)`` (float32) into ``codes (out, in)``
    (float32) and write their scaled errors into ``err (out, ncols)``; ``U``: upper Cholesky
    factor of H⁻¹; ``scale_*``/``zero_*``: ``(out, n_groups)`` in float64 and float32;
    ``col_group (in,)`` int32: each column's group. ``W`` itself is not modified (the caller
    applies the block's update to the later columns with one matmul)."""
    rows = W.shape[0]
    block_c = triton.next_power_of_2(ncols)
    grid = (triton.cdiv(rows, block_r),)
    _gptq_block_kernel[grid](
        W, U, codes, err, scale_d, zero_d, scale_f, zero_f, col_group,
        rows, ncols, col0, float(qmax),
        W.stride(0), W.stride(1), U.stride(0), U.stride(1), codes.stride(0), codes.stride(1),
        err.stride(0), err.stride(1), scale_d.stride(0), scale_d.stride(1),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )
