"""Activations as float16 pairs, one power-of-two scale per 128 inputs, for the half2 GEMV.

The half2 GEMV (``triton_gemv_half2``) turns one int32 word of 4-bit codes into four float16
pairs ``(q[8w+s], q[8w+s+4])``, ``s = 0..3``, and multiplies each pair with the matching pair of
inputs in one packed instruction. This pass writes those input pairs: ``xh[s, m, w]`` holds
``x[m, 8w+s]·2^-e`` in its low half and ``x[m, 8w+s+4]·2^-e`` in its high half (zero past K).

Why the scale: the GEMV accumulates four products per half in float16 before widening to
float32. Float16 overflows at 65504 and bfloat16 activations can be far larger, so every chunk
of 128 inputs is scaled by a power of two (exact) that brings its largest magnitude into
``[8, 16)``; the chunk's ``2^e`` goes to ``xe[m, c]`` and the GEMV multiplies it back in float32
together with the weight scale. Four products of ``|q - zero| <= 15`` and ``|x| < 16`` stay
below 1000, so nothing overflows, and inputs 2^18 times smaller than the chunk's largest one —
the only ones that fall into float16's subnormal range — add less than 2^-24 of it each.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 128            # inputs per power-of-two scale: one 4-bit group of 128, 16 words
CHUNK_WORDS = CHUNK // 8
TARGET_EXP = 4         # the scaled chunk's largest magnitude lies in [2^(TARGET_EXP-1), 2^TARGET_EXP)
TARGET_EXP_JIT = tl.constexpr(TARGET_EXP)  # the same, readable inside @triton.jit functions


@triton.jit
def pair_bits(lo, hi):
    """Two float32 tensors → int32 words holding them as float16, ``lo`` in the low half."""
    lo_bits = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi_bits = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) << 16
    return lo_bits | hi_bits


@triton.jit
def pow2_scale(amax, TARGET: tl.constexpr):
    """Powers of two ``(2^-e, 2^e)`` that bring ``amax`` into ``[2^(TARGET-1), 2^TARGET)``; an
    all-zero chunk keeps scale 1."""
    exp = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2(amax))
    e = tl.where(amax > 0, exp + 1 - TARGET, 0)
    e = tl.minimum(tl.maximum(e, -126), 126)  # 2^e and 2^-e stay normal float32
    down = ((127 - e) << 23).to(tl.float32, bitcast=True)
    up = ((127 + e) << 23).to(tl.float32, bitcast=True)
    return down, up


@triton.jit
def x_pairs(x_ptr, stride_xk, rw, k_end, NS: tl.constexpr, SW: tl.constexpr,
            TARGET: tl.constexpr):
    """The four input planes of words ``rw (NS, SW)`` straight from x, with one power of two per
    segment (row of ``rw``): ``(x0, x1, x2, x3)`` int32 pairs and ``up (NS,)``. Used inside the
    GEMV when it converts x itself (a segment of at most 128 inputs keeps the same bounds) and by
    the pass below, whose segments are the 128-input chunks."""
    rk = rw[:, :, None] * 8 + tl.arange(0, 8)[None, None, :]               # (NS, SW, 8)
    v = tl.load(x_ptr + rk * stride_xk, mask=rk < k_end, other=0.0).to(tl.float32)
    down, up = pow2_scale(tl.max(tl.max(tl.abs(v), axis=2), axis=1), TARGET)
    v = v * down[:, None, None]
    # (NS, SW, 8) → lo[..., s] = x[8w+s], hi[..., s] = x[8w+4+s]
    lo, hi = tl.split(tl.permute(tl.reshape(v, (NS, SW, 2, 4)), (0, 1, 3, 2)))
    even, odd = tl.split(tl.reshape(pair_bits(lo, hi), (NS, SW, 2, 2)))  # s = (0, 2), (1, 3)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3, up


@triton.jit
def _xhalf2_kernel(x_ptr, xh_ptr, xe_ptr, M, K, KW, KC, stride_xm, stride_xk,
                   CHUNKS: tl.constexpr, TARGET: tl.constexpr):
    # The pairs the GEMV builds in-kernel (x_pairs), each 128-input chunk a segment, written out.
    CW: tl.constexpr = 16  # words per chunk
    m = tl.program_id(0)
    rc = tl.program_id(1) * CHUNKS + tl.arange(0, CHUNKS)
    rw = rc[:, None] * CW + tl.arange(0, CW)[None, :]           # (CHUNKS, CW) word index
    x0, x1, x2, x3, up = x_pairs(x_ptr + m * stride_xm, stride_xk, rw, K, CHUNKS, CW, TARGET)
    tl.store(xe_ptr + m * KC + rc, up, mask=rc < KC)
    plane = xh_ptr + m * KW + rw
    mask = rw < KW
    tl.store(plane, x0, mask=mask)
    tl.store(plane + M * KW, x1, mask=mask)
    tl.store(plane + 2 * M * KW, x2, mask=mask)
    tl.store(plane + 3 * M * KW, x3, mask=mask)


def x_half2(x: torch.Tensor, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, K)`` (any strides, fp16/bf16/fp32) → ``xh (4, M, kw)`` int32 float16 pairs and
    ``xe (M, ceil(kw/16))`` float32 powers of two (one per 128 inputs)."""
    m, k = x.shape
    kc = triton.cdiv(kw, CHUNK_WORDS)
    xh = torch.empty(4, m, kw, dtype=torch.int32, device=x.device)
    xe = torch.empty(m, kc, dtype=torch.float32, device=x.device)
    chunks = 8
    _xhalf2_kernel[(m, triton.cdiv(kc, chunks))](
        x, xh, xe, m, k, kw, kc, x.stride(0), x.stride(1), CHUNKS=chunks, TARGET=TARGET_EXP,
        num_warps=4)
    return xh, xe
