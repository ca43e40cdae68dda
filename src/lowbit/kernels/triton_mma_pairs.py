"""Tensor-core kernel for 4-bit weight-only layers, dequantizing two codes per instruction.

Same product as ``triton_mma`` (``out^T = W · x^T``, so the weight tile is the dot's first
operand and a small batch fills only its narrow side; split-K optional), with the weight tile
built in packed 16-bit arithmetic in the activations' own dtype:

- one ``prmt`` puts byte ``j`` of the word at bits 0-7 and byte ``j`` of the word shifted right by
  4 at bits 16-23, so ``& 0x000F000F | MAGIC·0x10001`` (one ``lop3``) reads as the pair
  ``(MAGIC + q[8w+2j], MAGIC + q[8w+2j+1])``, where MAGIC is a power of two whose unit in the last
  place is 1 (bfloat16 128, float16 1024): OR-ing a nibble into its mantissa adds it exactly;
- one packed FMA subtracts ``MAGIC + zero`` (exact: a small integer), one packed FMA multiplies by
  the row's scale (one rounding of an exact product, the same bits as the reference's
  ``((q - zero)·scale).to(dtype)`` when the scales are stored in the activations' dtype).

That is about 2.6 instructions per code, where the float32 path of ``triton_mma`` spends ~9
(hence a separate kernel rather than a flag). The pairs come out in input order, so the inputs'
tile is a plain (pipelined, vectorised) load: a K order permuted within each word instead (one
``prmt`` less per pair) made the inputs scalar, synchronous loads. Needs the scales in the
activations' dtype (else ``triton_mma``), 4-bit codes and K tiles inside one group.

The packed instructions are inline PTX; Triton's CPU interpreter runs an emulation with the same
roundings instead (``USE_PTX`` false), so CI checks indexing, masks, split-K and the K order on
the CPU, and ``tests/test_kernels_compile_sm90.py`` checks the PTX assembles for the H100.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_layout import inline_ptx_ok
from .triton_mma import mma_program
from .triton_splitk import SplitOutput, split_tiles, store_result

# Per word: byte j of the word and of the word shifted right by 4 side by side (one prmt), so one
# lop3 reads the pair (MAGIC + q[2j], MAGIC + q[2j+1]); FMA by 1 minus (MAGIC + zero) of pair j's
# row (``zeros[j]``, an operand), FMA by its scale pair (``scales[j]``) plus -0 (a plain product,
# one rounding). ``T`` is the packed type. triton_mma_frag uses the same steps with two rows per
# word.
def packed_dequant_ptx(zeros: tuple, scales: tuple, magic: str, one: str, t: str) -> str:
    """The inline PTX turning ``$4`` (eight 4-bit codes) into four scaled 16-bit pairs
    ``$0``-``$3``; ``zeros``/``scales``: the operand holding each pair's ``-(MAGIC + zero)`` and
    scale pair."""
    lines = [".reg .b32 t, one, nz, p0, p1, p2, p3;", f"mov.b32 one, {one};",
             "mov.b32 nz, 0x80008000;", "shr.u32 t, $4, 4;"]
    lines += [f"prmt.b32 p{j}, $4, t, 0x{4 + j}{4 + j}{j}{j};" for j in range(4)]
    lines += [f"lop3.b32 p{j}, p{j}, 0x000f000f, {magic}, 0xea;" for j in range(4)]
    lines += [f"fma.rn.{t} p{j}, p{j}, one, {zeros[j]};" for j in range(4)]
    lines += [f"fma.rn.{t} ${j}, p{j}, {scales[j]}, nz;" for j in range(4)]
    return "{\n" + "\n".join(lines) + "\n}"


# bfloat16: 128 = 0x4300 (ulp 1 on [128, 256)), 1.0 = 0x3F80; float16: 1024 = 0x6400, 1.0 = 0x3C00.
BF16_MAGIC = dict(magic="0x43004300", one="0x3f803f80", t="bf16x2")
F16_MAGIC = dict(magic="0x64006400", one="0x3c003c00", t="f16x2")
_PTX_BF16 = tl.constexpr(packed_dequant_ptx(("$5",) * 4, ("$6",) * 4, **BF16_MAGIC))
_PTX_F16 = tl.constexpr(packed_dequant_ptx(("$5",) * 4, ("$6",) * 4, **F16_MAGIC))


@triton.jit
def halves(p, DT: tl.constexpr):
    """int32 holding two 16-bit floats → (low, high) as ``DT`` tensors."""
    lo = p.to(tl.int16).to(DT, bitcast=True)
    hi = (p >> 16).to(tl.int16).to(DT, bitcast=True)
    return lo, hi


@triton.jit
def dequant_tile(words, zero, scale_bits, DT: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr,
                 USE_PTX: tl.constexpr):
    """``words (BN, BW)`` int32 of 4-bit codes → ``(BN, 8·BW)`` ``DT`` weights ``(q - zero)·scale``
    in input order.

    ``zero (BN,)`` int32 codes; ``scale_bits (BN,)`` int32 holding the scale's 16 bits."""
    if DT == tl.bfloat16:
        MAGIC: tl.constexpr = 0x4300
    else:
        MAGIC: tl.constexpr = 0x6400
    if USE_PTX:
        neg_zz = ((MAGIC + zero) | 0x8000) * 0x10001  # -(MAGIC + zero), as a pair
        ss = (scale_bits & 0xFFFF) * 0x10001
        if DT == tl.bfloat16:
            asm: tl.constexpr = _PTX_BF16
        else:
            asm: tl.constexpr = _PTX_F16
        p0, p1, p2, p3 = tl.inline_asm_elementwise(
            asm, "=r,=r,=r,=r,r,r,r",
            [words, tl.broadcast_to(neg_zz[:, None], (BN, BW)),
             tl.broadcast_to(ss[:, None], (BN, BW))],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        l0, h0 = halves(p0, DT)
        l1, h1 = halves(p1, DT)
        l2, h2 = halves(p2, DT)
        l3, h3 = halves(p3, DT)
    else:  # interpreter: (q - zero) is exact in float32, then one rounding of the product
        z = zero.to(tl.float32)[:, None]
        s = (scale_bits & 0xFFFF).to(tl.int16).to(DT, bitcast=True).to(tl.float32)[:, None]
        l0 = ((((words >> 0) & 0xF).to(tl.float32) - z) * s).to(DT)
        h0 = ((((words >> 4) & 0xF).to(tl.float32) - z) * s).to(DT)
        l1 = ((((words >> 8) & 0xF).to(tl.float32) - z) * s).to(DT)
        h1 = ((((words >> 12) & 0xF).to(tl.float32) - z) * s).to(DT)
        l2 = ((((words >> 16) & 0xF).to(tl.float32) - z) * s).to(DT)
        h2 = ((((words >> 20) & 0xF).to(tl.float32) - z) * s).to(DT)
        l3 = ((((words >> 24) & 0xF).to(tl.float32) - z) * s).to(DT)
        h3 = ((((words >> 28) & 0xF).to(tl.float32) - z) * s).to(DT)
    # Code 4a + 2b + c of a word is half c of pair 2a + b (joins add the last axis).
    lo = tl.join(tl.join(l0, l2), tl.join(l1, l3))
    hi = tl.join(tl.join(h0, h2), tl.join(h1, h3))
    return tl.reshape(tl.join(lo, hi), (BN, BW * 8))


@triton.jit
def _scale_bits(s_ptr, rn, stride_sn, mask, tile, BK: tl.constexpr, group):
    """The rows' 16-bit scales for K tile ``tile`` as int32."""
    g = (tile * BK) // group
    return tl.load(s_ptr + rn * stride_sn + g, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(
        tl.int32)


@triton.jit
def _mma_pairs_kernel(
    x_ptr, wq_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
    M, N, K, KW, group, stride_xm, stride_xk, stride_wn, stride_sn, stride_zn, stride_om,
    BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PTX: tl.constexpr,
):
    BW: tl.constexpr = BK // 8
    DT: tl.constexpr = x_ptr.dtype.element_ty
    rn, rm, n_mask, m_mask, pid_k = mma_program(N, M, BN, BM)
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    acc = tl.zeros((BN, BM), tl.float32)
    # 16-bit scales cannot ride the pipeliner's asynchronous copies (4 bytes at least), so each
    # tile's scales are loaded one tile ahead by hand instead of stalling every iteration.
    scale_bits_next = _scale_bits(s_ptr, rn, stride_sn, n_mask & (rn * 0 + first < last), first, BK,
                                  group)
    for tile in range(first, last):
        rw = tile * BW + tl.arange(0, BW)
        words = tl.load(wq_ptr + rn[:, None] * stride_wn + rw[None, :],
                        mask=n_mask[:, None] & (rw < KW)[None, :], other=0)
        g = (tile * BK) // group
        scale_bits = scale_bits_next
        scale_bits_next = _scale_bits(s_ptr, rn, stride_sn, n_mask & (rn * 0 + tile + 1 < last),
                                      tile + 1, BK, group)
        if HAS_ZERO:
            zero = tl.load(z_ptr + rn * stride_zn + g, mask=n_mask, other=0)
        else:
            zero = tl.full((BN,), 8, tl.int32)
        w = dequant_tile(words, zero, scale_bits, DT, BN, BW, USE_PTX)
        rk = tile * BK + tl.arange(0, BK)
        xt = tl.load(x_ptr + rm[None, :] * stride_xm + rk[:, None] * stride_xk,
                     mask=(rk < K)[:, None] & m_mask[None, :], other=0.0)
        acc = tl.dot(w, xt, acc)
    store_result(acc, out_ptr, ws_ptr, ws_ptr, b_ptr, rm[None, :] * stride_om + rn[:, None],
                 rm[None, :] * N + rn[:, None], M * N, rn[:, None],
                 n_mask[:, None] & m_mask[None, :], pid_k, 0, SPLIT_K, False, HAS_BIAS)


def pairs_fit(layout, x: torch.Tensor) -> bool:
    """4-bit codes, scales stored in the activations' dtype, K tiles of at least 16 in a group."""
    return layout.bits == 4 and layout.scale.dtype == x.dtype and layout.block_k(128) >= 16


def mma_pairs(x: torch.Tensor, layout, bias, cfg) -> torch.Tensor:
    """``x (M, K)`` (any strides) times the layer's weight → ``(M, N)`` in ``x``'s dtype."""
    if not pairs_fit(layout, x):
        raise ValueError(f"int{layout.bits} with {layout.scale.dtype} scales and {x.dtype} inputs: "
                         "the packed-pair kernel needs 4-bit codes and scales in the input dtype")
    m = x.shape[0]
    bk = layout.block_k(cfg.block_k)
    split = cfg.split_k
    grid = (triton.cdiv(layout.n, cfg.block_n), triton.cdiv(m, cfg.block_m), split)
    res = SplitOutput(m, layout.n, x.dtype, x.device, split, grid[0] * grid[1], self_reduce=False)
    _mma_pairs_kernel[grid](
        x, layout.packed, layout.scale, layout.zero_or_dummy,
        bias if bias is not None else layout.scale, res.out, res.ws,
        m, layout.n, layout.k, layout.kw, layout.group_for(bk), x.stride(0), x.stride(1),
        layout.packed.stride(0), layout.stride_s, layout.stride_z, res.out.stride(0),
        BN=cfg.block_n, BM=cfg.block_m, BK=bk, SPLIT_K=split, HAS_ZERO=layout.has_zero,
        HAS_BIAS=bias is not None, USE_PTX=inline_ptx_ok(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return res.finish(bias, x.dtype)
