"""Triton kernels around the W8A8 GEMMs on CUDA: each replaces a chain of PyTorch ops (and their
passes over memory) by one pass.

- ``quantize_rows``: per-token (or static) activation quantization, int8 or E4M3: one program
  per row; a row of up to 16384 values is read once and kept in registers, a longer one is read
  in blocks of 2048, once for the absmax and once to write the codes (the second read mostly
  from L2). The arithmetic is
  kernels/activations.py's (IEEE divisions ``amax / 127.5`` and ``x / scale`` in float32 — Triton's
  plain ``/`` compiles to an approximate division on NVIDIA GPUs — round half to even, clamp;
  E4M3 by the saturating round-to-nearest-even conversion), so the codes equal PyTorch's; the
  per-value quotient is computed without a division (``quotient``), which is what made the pass
  fast: it had been bound by instructions, not memory.
- ``scale_int32``: the int8 GEMM's epilogue, ``acc · s_x · s_wᵀ (+ bias)`` from int32 to the
  output dtype in one pass (PyTorch takes four: cast, two products, cast), without fused
  multiply-adds, so each product and the sum round as PyTorch's separate ops do.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_layout import pdl_launch
from .triton_pdl import gdc_launch_dependents, gdc_wait

_TINY = torch.finfo(torch.float32).tiny
ONE_BLOCK_MAX = 16384  # rows up to this long are read once and kept in registers
# With the per-value division (before 2026-11-24 23:30) the pass was bound by instructions, and
# down_proj's rows of 14336 went fastest in two passes over blocks of 2048 (25.4 µs at M = 1024,
# bench/results/act_quant_sweep.md). With ``quotient`` the whole row in registers is fastest: on an
# H100 7.0 / 19.5 / 35.2 / 66.0 µs at M = 256 / 1024 / 2048 / 4096 against 7.7 / 26.1 / 47.0 /
# 82.3 for the blocks, and rows of 4096 with 4 warps 6.7 / 18.8 µs at M = 1024 / 4096 against 7.2
# / 19.6 with 8 (bench/act_quant_sweep.py, bench/results/act_quant_sweep-quotient.md, codes equal
# to PyTorch's). Rows over 16384 values keep the two passes.
LONG_ROW_BLOCK = 2048


@triton.jit
def quotient(x, scale, inv):
    """``x / scale`` rounded to nearest, the IEEE division's result, for ``inv = 1 / scale``
    rounded to nearest (one division per row, not per value): ``x·inv`` is within two units in
    the last place of the quotient; an FMA correction ``q + (x - q·scale)·inv`` (the residual
    exact in the FMA) brings it within one unit, and from within one unit a second lands on the
    correctly rounded quotient (Markstein's theorem). Five instructions against the division's
    sequence with its range check. ``x·inv`` is clamped to ±512 first so that an
    overflowing product (static scales) stays finite; every caller clamps below that."""
    q = tl.minimum(tl.maximum(x * inv, -512.0), 512.0)
    q = tl.fma(tl.fma(-q, scale, x), inv, q)
    return tl.fma(tl.fma(-q, scale, x), inv, q)


@triton.jit
def int8_codes(x, scale, inv):
    """``round(x / scale)`` clamped to [-128, 127] (as int32), as ``kernels/activations.quantize_int8``
    computes it: the IEEE quotient (``quotient``), then round half to even by adding 1.5·2^23
    (exact for |y| < 2^22, which the first clamp guarantees), whose low bits are then the integer:
    no float-to-int conversion (a quarter-rate instruction). Triton's CPU interpreter has no
    ``rint``; this arithmetic runs the same in CI and on the GPU."""
    y = tl.minimum(tl.maximum(quotient(x, scale, inv), -256.0), 256.0)
    r = (y + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000
    return tl.minimum(tl.maximum(r, -128), 127)


@triton.jit
def scaled_rows(acc, sx, sw_ptr, b_ptr, rn, n_mask, HAS_BIAS: tl.constexpr):
    """Float32 ``acc · s_x · s_wᵀ (+ bias)`` for token scales ``sx (BM,)`` and output rows ``rn``:
    ``reference_w8a8.scale_output``'s order (launch without FMA contraction to keep its roundings)."""
    sw = tl.load(sw_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    y = acc * sx[:, None] * sw[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def _codes(x, scale, FP8: tl.constexpr):
    inv = tl.math.div_rn(1.0, scale)
    if FP8:
        y = tl.minimum(tl.maximum(quotient(x, scale, inv), -448.0), 448.0)
        q = y.to(tl.float8e4nv, fp_downcast_rounding="rtne")
    else:
        q = int8_codes(x, scale, inv).to(tl.int8)
    return q


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, static_ptr, M, K, stride_x, stride_q,
                   DIVISOR: tl.constexpr, STATIC: tl.constexpr, FP8: tl.constexpr, TINY: tl.constexpr,
                   BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    if PDL:  # x is the previous kernel's output; the GEMM after this pass may launch meanwhile
        gdc_wait()
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    k_read = tl.where(row < M, K, 0)  # rows past M are padding for the GEMM: read nothing, zero codes
    offs = tl.arange(0, BLOCK)
    if ONE_BLOCK:  # the row fits one block: read it once and keep it in registers
        mask = offs < K
        x = tl.load(x_ptr + row * stride_x + offs, mask=offs < k_read, other=0.0).to(tl.float32)
        if STATIC:
            scale = tl.load(static_ptr).to(tl.float32)
        else:
            scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=0), DIVISOR), TINY)
        tl.store(s_ptr + row, scale)
        tl.store(q_ptr + row * stride_q + offs, _codes(x, scale, FP8), mask=mask)
    else:
        if STATIC:
            scale = tl.load(static_ptr).to(tl.float32)
        else:
            amax = tl.zeros([BLOCK], dtype=tl.float32)
            for k0 in range(0, K, BLOCK):
                x = tl.load(x_ptr + row * stride_x + k0 + offs, mask=k0 + offs < k_read, other=0.0)
                amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
            scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), DIVISOR), TINY)
        tl.store(s_ptr + row, scale)
        for k0 in range(0, K, BLOCK):
            mask = k0 + offs < K
            x = tl.load(x_ptr + row * stride_x + k0 + offs, mask=k0 + offs < k_read, other=0.0).to(tl.float32)
            tl.store(q_ptr + row * stride_q + k0 + offs, _codes(x, scale, FP8), mask=mask)


def quantize_rows(x: torch.Tensor, static_scale: torch.Tensor | None, fp8: bool, rows: int | None = None):
    """``x (M, K)`` → codes ``(rows, K)`` (int8 or float8_e4m3fn) and float32 scales ``(rows, 1)``;
    ``rows >= M`` pads with zero codes for GEMMs that need more rows (no separate padding pass)."""
    M, K = x.shape
    rows = max(rows or M, M)
    x = x if x.stride(1) == 1 else x.contiguous()
    q = torch.empty(rows, K, device=x.device, dtype=torch.float8_e4m3fn if fp8 else torch.int8)
    scale = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    static = static_scale is not None
    ptr = static_scale.float() if static else scale
    one_block = K <= ONE_BLOCK_MAX
    block = triton.next_power_of_2(K) if one_block else LONG_ROW_BLOCK
    _quantize_rows[(rows,)](x, q, scale, ptr, M, K, x.stride(0), q.stride(0), DIVISOR=448.0 if fp8 else 127.5,
                         STATIC=static, FP8=fp8, TINY=_TINY, BLOCK=block, ONE_BLOCK=one_block,
                         num_warps=(8 if block > 4096 else 4) if one_block else 16, **pdl_launch(x))
    return q, scale


@triton.jit
def _scale_int32(acc_ptr, sx_ptr, sw_ptr, bias_ptr, out_ptr, M, N, stride_acc, stride_out,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(acc_ptr + rm[:, None].to(tl.int64) * stride_acc + rn[None, :], mask=mask, other=0).to(tl.float32)
    sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
    y = scaled_rows(acc, sx, sw_ptr, bias_ptr, rn, rn < N, HAS_BIAS)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_out + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def scale_int32(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """``acc (M, N)`` int32 times ``x_scale (M, 1)`` and ``w_scale (N, 1)ᵀ``, plus ``bias``, in ``dtype``."""
    M, N = acc.shape
    out = torch.empty(M, N, device=acc.device, dtype=dtype)
    grid = (triton.cdiv(M, 32), triton.cdiv(N, 128))
    _scale_int32[grid](acc, x_scale.reshape(-1), w_scale.reshape(-1), bias if bias is not None else acc, out,
                       M, N, acc.stride(0), out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=32, BLOCK_N=128,
                       enable_fp_fusion=False)
    return out
