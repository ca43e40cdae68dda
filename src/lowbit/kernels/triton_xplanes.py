"""Activations regrouped by code position ("planes"), for the plane-wise weight-only kernels.

The plane kernels mask code ``j`` of every int32 word in place: plane ``j`` of a row holds
``q·2^p`` for the inputs ``k = w·E + j`` (``E`` codes per word, ``p`` the code's bit position
within its 16-bit half). They need x in the same order and pre-scaled by ``2^-p`` (exact): this
one small pass writes ``xp (E, M, KW)`` with ``xp[j, m, w] = x[m, w·E + j] · 2^-p`` (zero past
K), so the kernels read contiguous vectors instead of stride-E gathers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _xplanes_kernel(x_ptr, xp_ptr, M, K, KW, stride_xm, stride_xk,
                    BITS: tl.constexpr, BLOCK_W: tl.constexpr):
    EPW: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = EPW // 2
    m = tl.program_id(0)
    rw = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    for j in tl.static_range(EPW):
        rk = rw * EPW + j
        v = tl.load(x_ptr + m * stride_xm + rk * stride_xk, mask=rk < K, other=0.0).to(tl.float32)
        v = v * (1.0 / (1 << ((j % HALF) * BITS)))
        tl.store(xp_ptr + (j * M + m) * KW + rw, v.to(xp_ptr.dtype.element_ty), mask=rw < KW)


def x_planes(x: torch.Tensor, bits: int, kw: int, dtype: torch.dtype) -> torch.Tensor:
    """``x (M, K)`` (any strides) → ``xp (32/bits, M, kw)`` in ``dtype``."""
    m, k = x.shape
    xp = torch.empty(32 // bits, m, kw, dtype=dtype, device=x.device)
    block_w = 256
    _xplanes_kernel[(m, triton.cdiv(kw, block_w))](
        x, xp, m, k, kw, x.stride(0), x.stride(1), BITS=bits, BLOCK_W=block_w, num_warps=4)
    return xp
