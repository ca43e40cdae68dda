"""Triton building blocks for weight-only layers: unpack int32 words, dequantize a tile, and a
standalone dequantize kernel (the "dequantize, then cuBLAS" path for large batches).

Layout (QuantLinear, no repacking): ``weight_packed (N, ceil(K·bits/32))`` int32, codes packed
along the input dimension K, least significant bits first; ``weight_scale (N or 1, n_groups)``;
``weight_zero`` int32 of the same shape (asymmetric only; symmetric uses ``2^(bits-1)``).
A tile of ``BK`` inputs never straddles two scale groups: the launchers pick ``BK`` dividing the
group size, so one scale (and zero) per row serves the whole tile.

Why the bit tricks: an int→float conversion per weight (I2F) runs at a quarter of the FP32 rate
on Hopper and would make the decode kernels ALU-bound. ``q | 0x4B000000`` read as float32 is
exactly ``2^23 + q``; subtracting ``2^23 + zero`` (one constant per row and tile) gives ``q - zero``
exactly, for the cost of one logic op and one add.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAGIC_BITS = 0x4B000000  # float32 2^23: OR-ing a small integer into its mantissa adds it exactly
MAGIC = 8388608.0


@triton.jit
def unpack_words(words, BITS: tl.constexpr, ROWS: tl.constexpr, WORDS: tl.constexpr):
    """``words (ROWS, WORDS)`` int32 → codes ``(ROWS, WORDS·32/BITS)`` int32 in input order.

    Joins keep the codes of one word in the thread that loaded it (no shuffles). The join order
    is chosen so that flattening the trailing size-2 axes gives code ``j`` of each word at
    position ``j`` (for 4 bits: ``c[t, u, v] = q[4t + 2u + v]``).
    """
    if BITS == 4:
        a0 = tl.join(words & 0xF, (words >> 16) & 0xF)
        a1 = tl.join((words >> 4) & 0xF, (words >> 20) & 0xF)
        a2 = tl.join((words >> 8) & 0xF, (words >> 24) & 0xF)
        a3 = tl.join((words >> 12) & 0xF, (words >> 28) & 0xF)
        codes = tl.join(tl.join(a0, a2), tl.join(a1, a3))
    else:  # BITS == 8
        a0 = tl.join(words & 0xFF, (words >> 16) & 0xFF)
        a1 = tl.join((words >> 8) & 0xFF, (words >> 24) & 0xFF)
        codes = tl.join(a0, a1)
    return tl.reshape(codes, (ROWS, WORDS * (32 // BITS)))


@triton.jit
def load_scale_zero(s_ptr, z_ptr, rn, mask, g, stride_sn, stride_zn,
                    BITS: tl.constexpr, BN: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Float32 scale and zero ``(BN,)`` of group ``g`` for rows ``rn``; symmetric formats use
    the implicit zero ``2^(bits-1)``."""
    scale = tl.load(s_ptr + rn * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        zero = tl.load(z_ptr + rn * stride_zn + g, mask=mask, other=0).to(tl.float32)
    else:
        zero = tl.full((BN,), 1 << (BITS - 1), tl.float32)
    return scale, zero


@triton.jit
def load_codes_minus_zero(
    wq_ptr, s_ptr, z_ptr, rn, n_mask, tile, KW, group, stride_wn, stride_sn, stride_zn,
    BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_ZERO: tl.constexpr,
):
    """For rows ``rn`` and K-tile ``tile``: ``(q - zero)`` as float32 ``(BN, BK)`` and the rows'
    float32 scales ``(BN,)`` for the tile's group."""
    BW: tl.constexpr = BK * BITS // 32
    rw = tile * BW + tl.arange(0, BW)
    words = tl.load(wq_ptr + rn[:, None] * stride_wn + rw[None, :],
                    mask=n_mask[:, None] & (rw < KW)[None, :], other=0)
    codes = unpack_words(words, BITS, BN, BW)
    g = (tile * BK) // group
    scale, zero = load_scale_zero(s_ptr, z_ptr, rn, n_mask, g, stride_sn, stride_zn, BITS, BN, HAS_ZERO)
    magic_codes = (codes | 0x4B000000).to(tl.float32, bitcast=True)
    return magic_codes - (zero + 8388608.0)[:, None], scale


@triton.jit
def _dequant_kernel(
    wq_ptr, s_ptr, z_ptr, out_ptr, N, K, KW, group, stride_wn, stride_sn, stride_zn,
    BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_ZERO: tl.constexpr,
):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    tile = tl.program_id(1)
    n_mask = rn < N
    qz, scale = load_codes_minus_zero(wq_ptr, s_ptr, z_ptr, rn, n_mask, tile, KW, group,
                                      stride_wn, stride_sn, stride_zn, BITS, BN, BK, HAS_ZERO)
    w = qz * scale[:, None]
    rk = tile * BK + tl.arange(0, BK)
    tl.store(out_ptr + rn[:, None] * K + rk[None, :], w.to(out_ptr.dtype.element_ty),
             mask=n_mask[:, None] & (rk < K)[None, :])


def dequantize(layout, dtype, block_n: int = 64, num_warps: int = 4):
    """The layer's dense weight ``(N, K)`` in ``dtype`` (one pass over the packed codes)."""
    import torch

    out = torch.empty(layout.n, layout.k, dtype=dtype, device=layout.packed.device)
    grid = (triton.cdiv(layout.n, block_n), triton.cdiv(layout.k, layout.block_k(128)))
    _dequant_kernel[grid](
        layout.packed, layout.scale, layout.zero_or_dummy, out, layout.n, layout.k, layout.kw,
        layout.group_for(layout.block_k(128)), layout.packed.stride(0), layout.stride_s,
        layout.stride_z, BITS=layout.bits, BN=block_n, BK=layout.block_k(128),
        HAS_ZERO=layout.has_zero, num_warps=num_warps,
    )
    return out
