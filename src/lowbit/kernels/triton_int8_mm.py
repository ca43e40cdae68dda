"""The W8A8 int8 GEMM as one Triton kernel: int8 × int8 → int32 on tensor cores, with the
scales, the bias and the cast to the output dtype applied to the accumulator before it leaves
the chip.

Why not ``torch._int_mm``: on an H100 it reached only 1.0–1.2× bf16 ``F.linear`` at M ≥ 256
(bench/results/w8a8-kernels.md), where the int8 tensor cores peak at twice bf16's rate, and its
int32 result is written to memory and read back once more by the epilogue (4 bytes per output
element, twice). Triton lowers an int8 ``tl.dot`` to Hopper's s8 warpgroup MMA; fusing the
epilogue removes the int32 round trip.

Operands: ``q (M, K)`` int8 codes of the activations, ``w (N, K)`` int8 weight codes as the
module stores them (row-major, so the kernel reads ``wᵀ`` with K contiguous, the K-major
layout 8-bit MMAs want). ``x_scale (M,)``, ``w_scale (N,)`` float32. The accumulator is exact
(|codes| ≤ 127, K < 2^17 keeps it inside int32) and the epilogue is the reference's arithmetic in
float32, ``acc · s_x · s_w (+ bias)``, in the same order, so results equal the reference's.

Tiles are autotuned per (M bucket, N, K) the first time a shape is seen; call once outside a
CUDA graph capture (the benchmark's warm-up does) before capturing.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Hopper-friendly tiles (128-wide K steps feed the s8 MMA; 3-4 stages fit shared memory) plus
# narrower ones for M of a few hundred, where 128×256 tiles leave most SMs idle.
_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=5, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 256, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 256, "GROUP_M": 8}, num_stages=3, num_warps=4),
]
if os.environ.get("TRITON_INTERPRET") == "1":
    # The interpreter runs every config when tuning: one small tile keeps CPU tests quick and
    # still crosses tile edges on small shapes.
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2})]


def _m_bucket(M: int) -> int:
    return 1 << max(M - 1, 0).bit_length()


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K"])
@triton.jit
def _int8_mm_scaled(q_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                    stride_qm, stride_wn, stride_om, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rm = tl.where(offs_m < M, offs_m, 0).to(tl.int64)  # clamped rows: loads stay in bounds
    rn = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    q_ptrs = q_ptr + rm[:, None] * stride_qm + offs_k[None, :]
    w_ptrs = w_ptr + rn[None, :] * stride_wn + offs_k[:, None]  # (BLOCK_K, BLOCK_N) view of wᵀ
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(q_ptrs, mask=offs_k[None, :] < k_left, other=0)
        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        q_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    xs = tl.load(xs_ptr + rm)
    ws = tl.load(ws_ptr + rn)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def int8_mm_scaled(q: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``(q @ wᵀ) · x_scale · w_scaleᵀ (+ bias)`` in ``dtype``: ``q (M, K)``, ``w (N, K)`` int8;
    ``x_scale`` ``M`` values, ``w_scale`` ``N`` values (any shape holding them)."""
    M, K = q.shape
    N = w.shape[0]
    q, w = q.contiguous(), w.contiguous()
    xs = x_scale.reshape(-1).float().contiguous()
    ws = w_scale.reshape(-1).float().contiguous()
    out = torch.empty(M, N, device=q.device, dtype=dtype)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _int8_mm_scaled[grid](q, w, xs, ws, bias if bias is not None else xs, out, M, N, K, _m_bucket(M),
                          q.stride(0), w.stride(0), out.stride(0), HAS_BIAS=bias is not None)
    return out
