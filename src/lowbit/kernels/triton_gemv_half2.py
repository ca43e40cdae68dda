"""GEMV for 4-bit codes with packed float16 arithmetic (two codes per instruction), batch 1-8.

One int32 word (eight codes) becomes four float16 pairs with one shift and one ``lop3`` each:
``(word >> 4s) & 0x000F000F | 0x64006400`` reads as the pair ``(1024 + q[8w+s], 1024 + q[8w+s+4])``
(1024 is float16's 2^10; OR-ing a nibble into its mantissa adds it exactly). One packed subtract
of ``1024 + zero`` leaves ``q - zero`` exactly, and packed FMAs with the matching input pairs
(``triton_xhalf2``) accumulate four products per half. The pair is then widened to float32 and
summed, and multiplied by the segment's scale times the inputs' power of two. That is about 2.4
arithmetic instructions per code (about 4 with addressing and the input pairing) where the other
GEMVs spend 5-7. On the H100 that alone moved little: the speed came from the tile shape (256
inputs, 128 contiguous bytes per row), issuing the next tile's loads before computing the current
one, pairing x in the kernel and summing split-K in it (docs/KERNELS.md has the steps). With 2-8
input rows the codes are unpacked once for all rows.

Precision: products and the four-term sums are rounded to float16 (2^-11 relative to the sum of
the products' magnitudes), then everything is float32. For bfloat16 models the output's own
rounding (2^-8) dominates; for float16 models both are 2^-11 (measured 4.6e-4 relative error).
Range: see ``triton_xhalf2`` (no overflow for any finite input).

The packed instructions are inline PTX, which Triton's CPU interpreter cannot run: there the same
steps are emulated with integer and float ops (float16 roundings included), so the CI tests check
the kernel's indexing, masking, split-K and scaling on the CPU, ``test_kernels_compile_sm90``
checks the PTX assembles for the H100, and the benchmarks' correctness columns check it runs
right on the GPU.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from .triton_layout import inline_ptx_ok, pdl_launch
from .triton_pdl import gdc_launch_dependents, gdc_wait
from .triton_splitk import SplitOutput, split_tiles, store_result
from .triton_xhalf2 import CHUNK, TARGET_EXP_JIT, pair_bits, x_half2, x_pairs

_DEQUANT_PTX = tl.constexpr("""
{
.reg .b32 t, p0, p1, p2, p3;
lop3.b32 p0, $4, 0x000f000f, 0x64006400, 0xea;
shr.u32 t, $4, 4;
lop3.b32 p1, t, 0x000f000f, 0x64006400, 0xea;
shr.u32 t, $4, 8;
lop3.b32 p2, t, 0x000f000f, 0x64006400, 0xea;
shr.u32 t, $4, 12;
lop3.b32 p3, t, 0x000f000f, 0x64006400, 0xea;
sub.rn.f16x2 $0, p0, $5;
sub.rn.f16x2 $1, p1, $5;
sub.rn.f16x2 $2, p2, $5;
sub.rn.f16x2 $3, p3, $5;
}
""")

_DOT_PTX = tl.constexpr("""
{
.reg .b32 a;
.reg .f16 l, h;
.reg .f32 fl, fh, s;
mul.rn.f16x2 a, $1, $5;
fma.rn.f16x2 a, $2, $6, a;
fma.rn.f16x2 a, $3, $7, a;
fma.rn.f16x2 a, $4, $8, a;
mov.b32 {l, h}, a;
cvt.f32.f16 fl, l;
cvt.f32.f16 fh, h;
add.f32 s, fl, fh;
mov.b32 $0, s;
}
""")


@triton.jit
def _f16_halves(pair):
    """int32 holding two float16 → (low, high) as float32 (exact)."""
    lo = (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _to_f16(v):
    return v.to(tl.float16).to(tl.float32)


@triton.jit
def dequant_pairs(words, zz, USE_PTX: tl.constexpr):
    """int32 words of 4-bit codes → four int32 float16 pairs ``(q[8w+s] - z, q[8w+s+4] - z)``.

    ``zz`` holds ``1024 + zero`` as a float16 pair (``(0x6400 + z)·0x10001``)."""
    if USE_PTX:
        p0, p1, p2, p3 = tl.inline_asm_elementwise(
            _DEQUANT_PTX, "=r,=r,=r,=r,r,r", [words, zz],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    else:  # interpreter: (q - z) is a small integer, so its float16 bits are built exactly
        z, _ = _f16_halves(zz)
        z = z - 1024.0
        p0 = pair_bits((words & 0xF).to(tl.float32) - z, ((words >> 16) & 0xF).to(tl.float32) - z)
        p1 = pair_bits(((words >> 4) & 0xF).to(tl.float32) - z,
                              ((words >> 20) & 0xF).to(tl.float32) - z)
        p2 = pair_bits(((words >> 8) & 0xF).to(tl.float32) - z,
                              ((words >> 24) & 0xF).to(tl.float32) - z)
        p3 = pair_bits(((words >> 12) & 0xF).to(tl.float32) - z,
                              ((words >> 28) & 0xF).to(tl.float32) - z)
    return p0, p1, p2, p3


@triton.jit
def dot_pairs(p0, p1, p2, p3, x0, x1, x2, x3, USE_PTX: tl.constexpr):
    """Σ_s p_s·x_s over four float16 pairs, accumulated per half in float16, then the two halves
    widened and added in float32."""
    if USE_PTX:
        bits = tl.inline_asm_elementwise(
            _DOT_PTX, "=r,r,r,r,r,r,r,r,r", [p0, p1, p2, p3, x0, x1, x2, x3],
            dtype=tl.int32, is_pure=True, pack=1)
        total = bits.to(tl.float32, bitcast=True)
    else:  # float16 rounding after every product and sum, as the packed FMAs do
        a0, b0 = _f16_halves(p0)
        c0, d0 = _f16_halves(x0)
        lo = _to_f16(a0 * c0)
        hi = _to_f16(b0 * d0)
        a1, b1 = _f16_halves(p1)
        c1, d1 = _f16_halves(x1)
        lo = _to_f16(a1 * c1 + lo)
        hi = _to_f16(b1 * d1 + hi)
        a2, b2 = _f16_halves(p2)
        c2, d2 = _f16_halves(x2)
        lo = _to_f16(a2 * c2 + lo)
        hi = _to_f16(b2 * d2 + hi)
        a3, b3 = _f16_halves(p3)
        c3, d3 = _f16_halves(x3)
        lo = _to_f16(a3 * c3 + lo)
        hi = _to_f16(b3 * d3 + hi)
        total = lo + hi
    return total


@triton.jit
def _stack_planes(r0, r1, r2, r3):
    """Four ``(NS, SW)`` tensors stacked along a new leading axis (rows in order)."""
    j = tl.join(tl.join(r0, r1), tl.join(r2, r3))  # [..., i, k] is row 2k + i
    return tl.reshape(tl.permute(j, (3, 2, 0, 1)), (4, j.shape[0], j.shape[1]))


@triton.jit
def _stack_scales(r0, r1, r2, r3):
    """The same for ``(NS,)`` tensors."""
    j = tl.join(tl.join(r0, r1), tl.join(r2, r3))
    return tl.reshape(tl.permute(j, (2, 1, 0)), (4, j.shape[0]))


@triton.jit
def _x_pairs_rows(x_ptr, stride_xm, stride_xk, rw, k_end, M, NS: tl.constexpr, SW: tl.constexpr):
    """``x_pairs`` for four input rows (rows past M read nothing): planes ``(4, NS, SW)`` and
    powers of two ``(4, NS)``."""
    a0, a1, a2, a3, ua = x_pairs(x_ptr, stride_xk, rw, k_end, NS, SW, TARGET_EXP_JIT)
    b0, b1, b2, b3, ub = x_pairs(x_ptr + stride_xm, stride_xk, rw, tl.where(M > 1, k_end, 0), NS,
                                 SW, TARGET_EXP_JIT)
    c0, c1, c2, c3, uc = x_pairs(x_ptr + 2 * stride_xm, stride_xk, rw, tl.where(M > 2, k_end, 0),
                                 NS, SW, TARGET_EXP_JIT)
    d0, d1, d2, d3, ud = x_pairs(x_ptr + 3 * stride_xm, stride_xk, rw, tl.where(M > 3, k_end, 0),
                                 NS, SW, TARGET_EXP_JIT)
    return (_stack_planes(a0, b0, c0, d0), _stack_planes(a1, b1, c1, d1),
            _stack_planes(a2, b2, c2, d2), _stack_planes(a3, b3, c3, d3),
            _stack_scales(ua, ub, uc, ud))


@triton.jit
def _load_weights(wq_ptr, s_ptr, z_ptr, rn, n_mask, tile, last, K, KW, group, stride_wn,
                  stride_sn, stride_zn, BN: tl.constexpr, NS: tl.constexpr, SW: tl.constexpr,
                  HAS_ZERO: tl.constexpr):
    """The weight half of ``_load_tile``: words ``(BN, NS, SW)``, ``1024 + zero`` pairs and scales
    ``(BN, NS)`` (nothing a preceding kernel writes, so it may be loaded before ``gdc_wait``)."""
    live = n_mask & ((tl.zeros((BN,), tl.int32) + tile) < last)
    seg = tl.arange(0, NS)
    rw = tile * (NS * SW) + seg[:, None] * SW + tl.arange(0, SW)[None, :]      # (NS, SW)
    words = tl.load(wq_ptr + rn[:, None, None] * stride_wn + rw[None, :, :],
                    mask=live[:, None, None] & (rw < KW)[None, :, :], other=0)
    k0 = (tile * NS + seg) * (SW * 8)                                           # (NS,) first input
    g = k0 // group
    # Segments past K have no scale group: reading one would run past the last row's scales
    # (garbage there times a zero product can be NaN), so they get scale 0.
    sz_mask = live[:, None] & (k0 < K)[None, :]
    scale = tl.load(s_ptr + rn[:, None] * stride_sn + g[None, :], mask=sz_mask,
                    other=0.0).to(tl.float32)
    if HAS_ZERO:
        zero = tl.load(z_ptr + rn[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0)
    else:
        zero = tl.full((BN, NS), 8, tl.int32)
    return words, (0x6400 + zero) * 0x10001, scale


@triton.jit
def _load_inputs(xh_ptr, xe_ptr, x_ptr, rm, m_mask, tile, M, K, KW, KC, w_end, stride_xm,
                 stride_xk, BM: tl.constexpr, NS: tl.constexpr, SW: tl.constexpr,
                 XCHUNK: tl.constexpr, FUSE_X: tl.constexpr):
    """The input half of ``_load_tile``: the four input planes and their powers of two."""
    seg = tl.arange(0, NS)
    rw = tile * (NS * SW) + seg[:, None] * SW + tl.arange(0, SW)[None, :]      # (NS, SW)
    if FUSE_X and BM == 1:  # pairs built here from x, one power of two per segment
        x0, x1, x2, x3, up = x_pairs(x_ptr, stride_xk, rw, tl.minimum(K, w_end * 8), NS, SW,
                                     TARGET_EXP_JIT)
    elif FUSE_X and BM == 2:  # the two rows' planes joined: (NS, SW, 2), powers (NS, 2)
        k_end = tl.minimum(K, w_end * 8)
        a0, a1, a2, a3, ua = x_pairs(x_ptr, stride_xk, rw, k_end, NS, SW, TARGET_EXP_JIT)
        b0, b1, b2, b3, ub = x_pairs(x_ptr + stride_xm, stride_xk, rw, tl.where(M > 1, k_end, 0),
                                     NS, SW, TARGET_EXP_JIT)
        x0, x1, x2, x3 = tl.join(a0, b0), tl.join(a1, b1), tl.join(a2, b2), tl.join(a3, b3)
        up = tl.join(ua, ub)
    elif FUSE_X:
        x0, x1, x2, x3, up = _x_pairs_rows(x_ptr, stride_xm, stride_xk, rw,
                                           tl.minimum(K, w_end * 8), M, NS, SW)
    else:  # pairs from the input pass (triton_xhalf2), one power of two per 128 inputs
        k0 = (tile * NS + seg) * (SW * 8)
        x_mask = m_mask[:, None, None] & (rw < w_end)[None, :, :]
        plane = xh_ptr + rm[:, None, None] * KW + rw[None, :, :]
        x0 = tl.load(plane, mask=x_mask, other=0)
        x1 = tl.load(plane + M * KW, mask=x_mask, other=0)
        x2 = tl.load(plane + 2 * M * KW, mask=x_mask, other=0)
        x3 = tl.load(plane + 3 * M * KW, mask=x_mask, other=0)
        up = tl.load(xe_ptr + rm[:, None] * KC + tl.minimum(k0 // XCHUNK, KC - 1)[None, :],
                     mask=m_mask[:, None], other=0.0)
    return x0, x1, x2, x3, up


@triton.jit
def _load_tile(xh_ptr, xe_ptr, x_ptr, wq_ptr, s_ptr, z_ptr, rn, n_mask, rm, m_mask, tile, last,
               M, K, KW, KC, w_end, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn,
               BM: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, SW: tl.constexpr,
               HAS_ZERO: tl.constexpr, XCHUNK: tl.constexpr, FUSE_X: tl.constexpr,
               PDL_WAIT: tl.constexpr = False):
    """Everything one K tile needs, as ``NS`` segments of ``SW`` words (a segment lies in one
    scale group and one 128-input chunk of the input scales): the words ``(BN, NS, SW)``, the
    rows' ``1024 + zero`` pairs and scales ``(BN, NS)``, the four input planes ``(BM, NS, SW)``
    and their powers of two ``(BM, NS)`` — without the leading axis when x is paired here (batch
    1). A tile at or past ``last`` loads nothing (zero words and zero inputs add nothing).
    ``PDL_WAIT``: the weights are requested, then the program waits for the preceding kernel
    (programmatic dependent launch), then reads the inputs it wrote."""
    words, zz, scale = _load_weights(wq_ptr, s_ptr, z_ptr, rn, n_mask, tile, last, K, KW, group,
                                     stride_wn, stride_sn, stride_zn, BN, NS, SW, HAS_ZERO)
    if PDL_WAIT:
        gdc_wait()
    x0, x1, x2, x3, up = _load_inputs(xh_ptr, xe_ptr, x_ptr, rm, m_mask, tile, M, K, KW, KC,
                                      w_end, stride_xm, stride_xk, BM, NS, SW, XCHUNK, FUSE_X)
    return words, zz, scale, x0, x1, x2, x3, up


@triton.jit
def _row_product(p0, p1, p2, p3, x0, x1, x2, x3, scale, up, BN: tl.constexpr, NS: tl.constexpr,
                 SW: tl.constexpr, USE_PTX: tl.constexpr):
    """One input row's planes ``(NS, SW)`` times the unpacked words, scaled, summed over runs of
    ``VEC`` consecutive words: ``(BN, NS, SW // VEC)``. A thread holds such a run (one 16-byte
    load), so the sum stays in its registers and the accumulator is ``VEC`` times smaller (at
    batch 1 on 32 rows: 8 float32 registers instead of 32)."""
    shape3: tl.constexpr = (BN, NS, SW)
    VEC: tl.constexpr = min(4, SW)
    part = dot_pairs(p0, p1, p2, p3, tl.broadcast_to(x0[None], shape3),
                     tl.broadcast_to(x1[None], shape3), tl.broadcast_to(x2[None], shape3),
                     tl.broadcast_to(x3[None], shape3), USE_PTX)
    part = tl.sum(tl.reshape(part, (BN, NS, SW // VEC, VEC)), axis=3)
    return part * (scale * up[None, :])[:, :, None]


@triton.jit
def _tile_product(words, zz, scale, x0, x1, x2, x3, up, BM: tl.constexpr, BN: tl.constexpr,
                  NS: tl.constexpr, SW: tl.constexpr, USE_PTX: tl.constexpr,
                  FUSED_ROWS: tl.constexpr):
    """Each word's eight products with each input row, scaled by the segment's weight scale and
    input power of two: ``(BN, NS, SW)`` float32 for ``FUSED_ROWS`` 1 (batch 1, x paired here),
    ``(BN, NS, SW, 2)`` for ``FUSED_ROWS`` 2, else ``(BM, BN, NS)`` summed over the segment's
    words. The codes are unpacked once and reused by every input row."""
    shape: tl.constexpr = (BM, BN, NS, SW)
    p0, p1, p2, p3 = dequant_pairs(words, tl.broadcast_to(zz[:, :, None], (BN, NS, SW)), USE_PTX)
    if FUSED_ROWS == 1:  # three dimensions (a unit axis costs more)
        part = _row_product(p0, p1, p2, p3, x0, x1, x2, x3, scale, up, BN, NS, SW, USE_PTX)
    elif FUSED_ROWS == 2:
        # Two full accumulators, summed once after the K loop: reducing across the segment's
        # words every tile (the path below) made batch 2 cost 1.7x batch 1 on the H100.
        a0, b0 = tl.split(x0)
        a1, b1 = tl.split(x1)
        a2, b2 = tl.split(x2)
        a3, b3 = tl.split(x3)
        ua, ub = tl.split(up)
        part = tl.join(_row_product(p0, p1, p2, p3, a0, a1, a2, a3, scale, ua, BN, NS, SW, USE_PTX),
                       _row_product(p0, p1, p2, p3, b0, b1, b2, b3, scale, ub, BN, NS, SW, USE_PTX))
    else:
        part = dot_pairs(tl.broadcast_to(p0[None], shape), tl.broadcast_to(p1[None], shape),
                         tl.broadcast_to(p2[None], shape), tl.broadcast_to(p3[None], shape),
                         tl.broadcast_to(x0[:, None], shape), tl.broadcast_to(x1[:, None], shape),
                         tl.broadcast_to(x2[:, None], shape), tl.broadcast_to(x3[:, None], shape),
                         USE_PTX)
        # (BM, BN, NS): summed over the segment's words at once, so the accumulator does not
        # grow with the batch (BM words of float32 per word held would spill)
        part = tl.sum(part, axis=3) * (scale[None, :, :] * up[:, None, :])
    return part


@triton.jit
def _gemv_half2_kernel(
    xh_ptr, xe_ptr, x_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, KC, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn,
    BM: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, SW: tl.constexpr,
    UNROLL: tl.constexpr, SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_PTX: tl.constexpr, XCHUNK: tl.constexpr, FUSE_X: tl.constexpr,
    SELF_REDUCE: tl.constexpr, PDL: tl.constexpr = False,
):
    # A tile is BN rows by NS·SW words: several segments per row so that each row's read is
    # long and contiguous (128 bytes and more), whatever the group size. BM input rows (all of
    # a small batch) share every unpacked code.
    # UNROLL = 1: plain loop. UNROLL = 2: software-pipelined by hand — the loads of tile t + 1
    # are issued before tile t is computed, so every program keeps a tile's bytes in flight
    # while it works.
    # PDL (programmatic dependent launch, Hopper): the next kernel may start as soon as every
    # program here has begun, and this one requests its first weights before waiting for the
    # previous kernel; nothing a preceding kernel writes (x, the workspace, the counters) is
    # touched before that wait.
    BK: tl.constexpr = NS * SW * 8
    # rows held in full-size accumulators (x paired here): batch 1 as (BN, NS, SW), batch 2 as
    # (BN, NS, SW, 2); 0: the general (BM, BN, NS) form
    ROWS: tl.constexpr = BM if FUSE_X and BM <= 2 else 0
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    n_mask = rn < N
    rm = tl.arange(0, BM)
    m_mask = rm < M
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    w_end = tl.minimum(KW, last * (NS * SW))  # this split's words end here
    VEC: tl.constexpr = min(4, SW)  # words summed as they come (_row_product)
    if ROWS == 1:
        acc = tl.zeros((BN, NS, SW // VEC), tl.float32)
    elif ROWS == 2:
        acc = tl.zeros((BN, NS, SW // VEC, 2), tl.float32)
    else:
        acc = tl.zeros((BM, BN, NS), tl.float32)
    if UNROLL == 1:
        if PDL:
            gdc_wait()
        for tile in range(first, last):
            words, zz, sc, x0, x1, x2, x3, up = _load_tile(
                xh_ptr, xe_ptr, x_ptr, wq_ptr, s_ptr, z_ptr, rn, n_mask, rm, m_mask, tile, last,
                M, K, KW, KC, w_end, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn,
                BM, BN, NS, SW, HAS_ZERO, XCHUNK, FUSE_X)
            acc += _tile_product(words, zz, sc, x0, x1, x2, x3, up, BM, BN, NS, SW, USE_PTX, ROWS)
    else:
        words, zz, sc, x0, x1, x2, x3, up = _load_tile(
            xh_ptr, xe_ptr, x_ptr, wq_ptr, s_ptr, z_ptr, rn, n_mask, rm, m_mask, first, last,
            M, K, KW, KC, w_end, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn,
            BM, BN, NS, SW, HAS_ZERO, XCHUNK, FUSE_X, PDL)
        for tile in range(first, last):
            n_words, n_zz, n_sc, n_x0, n_x1, n_x2, n_x3, n_up = _load_tile(
                xh_ptr, xe_ptr, x_ptr, wq_ptr, s_ptr, z_ptr, rn, n_mask, rm, m_mask, tile + 1,
                last, M, K, KW, KC, w_end, group, stride_xm, stride_xk, stride_wn, stride_sn,
                stride_zn, BM, BN, NS, SW, HAS_ZERO, XCHUNK, FUSE_X)
            acc += _tile_product(words, zz, sc, x0, x1, x2, x3, up, BM, BN, NS, SW, USE_PTX, ROWS)
            words, zz, sc, x0, x1, x2, x3, up = n_words, n_zz, n_sc, n_x0, n_x1, n_x2, n_x3, n_up
    if ROWS == 1:
        total = tl.sum(tl.sum(acc, axis=2), axis=1)[None, :]                    # (1, BN)
    elif ROWS == 2:
        total = tl.permute(tl.sum(tl.sum(acc, axis=2), axis=1), (1, 0))          # (2, BN)
    else:
        total = tl.sum(acc, axis=2)                                             # (BM, BN)
    out_offs = rm[:, None] * N + rn[None, :]
    store_result(total, out_ptr, ws_ptr, cnt_ptr, b_ptr, out_offs, out_offs, M * N, rn[None, :],
                 m_mask[:, None] & n_mask[None, :], pid_k, pid_n, SPLIT_K, SELF_REDUCE, HAS_BIAS)


MAX_ROWS = 8  # input rows one program multiplies on CUDA cores; larger batches go to tensor cores
MAX_FUSED_ROWS = 4  # with x paired in the kernel (one x_pairs per row)


def half2_segment(layout, block_k: int) -> int:
    """Inputs per segment: a power of two dividing the group (one scale), 128 (one chunk of the
    input scales) and the tile."""
    return layout.block_k(min(CHUNK, block_k))


def half2_fits(layout, block_k: int) -> bool:
    """4-bit codes, K tiles a whole number of segments."""
    seg = half2_segment(layout, block_k)
    return layout.bits == 4 and seg >= 16 and block_k >= seg and block_k % seg == 0


def gemv_half2(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (M, K)`` times the layer's 4-bit weight → ``(M, N)`` in ``x``'s dtype, for M ≤ 8 (every
    program takes all rows). The K tile is ``cfg.block_k`` inputs (a power of two; at least one
    segment). ``cfg.fuse_x`` (up to 4 rows) pairs x in the kernel instead of a separate pass."""
    m = x.shape[0]
    if not half2_fits(layout, cfg.block_k):
        raise ValueError("the half2 GEMV takes 4-bit codes with K tiles of whole segments")
    bm = 1 if m == 1 else max(2, triton.next_power_of_2(m))
    if bm > MAX_ROWS or (cfg.fuse_x and bm > MAX_FUSED_ROWS):
        raise ValueError(f"the half2 GEMV takes at most {MAX_ROWS} rows ({MAX_FUSED_ROWS} with x "
                         f"paired in the kernel), got {m}")
    seg = half2_segment(layout, cfg.block_k)
    split = cfg.split_k
    if cfg.fuse_x:
        xh = xe = torch.empty(1, dtype=torch.int32, device=x.device)  # unread
        kc = 1
    else:
        xh, xe = x_half2(x, layout.kw)
        kc = xe.shape[1]
    grid = (triton.cdiv(layout.n, cfg.block_n), split)
    res = SplitOutput(m, layout.n, x.dtype, x.device, split, grid[0])
    _gemv_half2_kernel[grid](
        xh, xe, x, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, res.out, res.ws, res.counters_or_dummy,
        m, layout.n, layout.k, layout.kw, kc, layout.group_for(seg), x.stride(0), x.stride(1),
        layout.packed.stride(0), layout.stride_s, layout.stride_z,
        BM=bm, BN=cfg.block_n, NS=cfg.block_k // seg, SW=seg // 8, UNROLL=cfg.unroll,
        SPLIT_K=split, HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None, USE_PTX=inline_ptx_ok(x),
        XCHUNK=CHUNK, FUSE_X=cfg.fuse_x, SELF_REDUCE=res.self_reduce, num_warps=cfg.num_warps,
        num_stages=1, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}), **pdl_launch(x),
    )
    return res.finish(bias, x.dtype)
