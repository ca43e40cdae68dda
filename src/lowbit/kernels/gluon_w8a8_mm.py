"""The W8A8 GEMM of ``triton_int8_mm`` written in Gluon (Triton's explicit-layout dialect), for
int8 codes on Hopper at large M.

Why a second kernel: Triton issues a ``wgmma`` whose accumulator is not float32 synchronously (its
pipeliner only makes float32-accumulating dots asynchronous), so the int8 GEMM waits for each K
step's tensor-core work to finish before it issues the next one, and its tensor cores idle in
between; the E4M3 GEMM on the same tiles keeps one step in flight. On an H100 that left int8 at
1234 TOPS against E4M3's 1290 sustained under the board's power cap, and ~20% behind in short
bursts (``bench/int8_vs_fp8_gemm.py``, ``bench/results/int8_vs_fp8_gemm.md``). Gluon exposes the
wait (``warpgroup_mma_wait(num_outstanding=1)``), so here one K step's MMAs run while the next
step's are issued, as for E4M3.

Same contract as ``triton_int8_mm._int8_mm_tma``: ``out = (q @ wᵀ) · x_scale · w_scaleᵀ (+ bias)``
from exact int32 sums (or float32 for E4M3 codes), full tiles in grouped order, the descriptors
zero-filling past M, N and K. Compiles for Hopper only; ``available()`` says whether this Triton
has Gluon.
"""
from __future__ import annotations

import torch
import triton

try:  # Gluon is experimental: absent or different in some Triton releases
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    # the TMA load's name changed between releases (async_copy_global_to_shared, then async_load)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any failure means "no Gluon here"
    _IMPORT_ERROR = e

INT8_MMA_N = (128, 112, 96, 80, 64, 48, 32, 16, 8)  # wgmma N for 8-bit integers that divide tiles (PTX: ≤ 224)


def available() -> bool:
    return _IMPORT_ERROR is None


def mma_n(block_n: int, int8: bool) -> int:
    """The wgmma instruction's N for a warpgroup covering ``block_n`` columns."""
    if not int8:
        return min(block_n, 256)
    return next(n for n in INT8_MMA_N if block_n % n == 0)


if _IMPORT_ERROR is None:
    @gluon.jit
    def _w8a8_mm_gluon(a_desc, b_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                       HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                       MMA_N: gl.constexpr, INT8: gl.constexpr, num_warps: gl.constexpr):
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        MMA_K: gl.constexpr = 32  # 256 bits of 8-bit codes
        # every warp takes 16 rows: a warpgroup 64 rows by all BLOCK_N columns
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, MMA_N, MMA_K])
        pid = gl.program_id(0)
        n_m = gl.cdiv(M, BLOCK_M)
        n_n = gl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * n_n  # grouped order: GROUP_M row tiles share a column tile while it is in L2
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = gl.minimum(n_m - first_m, GROUP_M)
        off_m = (first_m + (pid % per_group) % rows_in_group) * BLOCK_M
        off_n = ((pid % per_group) // rows_in_group) * BLOCK_N

        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        k_tiles = gl.cdiv(K, BLOCK_K)
        nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # one byte per code
        for i in gl.static_range(STAGES - 1):  # the first STAGES - 1 K tiles in flight
            pred = i < k_tiles
            mbarrier.expect(ready.index(i), nbytes, pred=pred)
            _tma_load(a_desc, [off_m, i * BLOCK_K], ready.index(i), a_bufs.index(i), pred=pred)
            _tma_load(b_desc, [off_n, i * BLOCK_K], ready.index(i), b_bufs.index(i), pred=pred)

        if INT8:
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
        else:
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=layout)
        for k in range(k_tiles):
            s = k % STAGES
            mbarrier.wait(ready.index(s), (k // STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
            # one step's MMAs stay in flight; the step before is done, so its stage can be refilled
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            nk = k + STAGES - 1
            ns = nk % STAGES
            pred = nk < k_tiles
            mbarrier.expect(ready.index(ns), nbytes, pred=pred)
            _tma_load(a_desc, [off_m, nk * BLOCK_K], ready.index(ns), a_bufs.index(ns), pred=pred)
            _tma_load(b_desc, [off_n, nk * BLOCK_K], ready.index(ns), b_bufs.index(ns), pred=pred)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        rm = gl.where(offs_m < M, offs_m, 0)  # clamped: scale loads stay in bounds, stores are masked
        rn = gl.where(offs_n < N, offs_n, 0)
        # triton_int8_mm._store_scaled's arithmetic: (acc · s_x) · s_w (+ bias), launched without FMA contraction
        y = acc.to(gl.float32) * gl.load(xs_ptr + rm)[:, None] * gl.load(ws_ptr + rn).to(gl.float32)[None, :]
        if HAS_BIAS:
            y = y + gl.load(bias_ptr + rn).to(gl.float32)[None, :]
        out = out_ptr + offs_m[:, None].to(gl.int64) * stride_om + offs_n[None, :]
        gl.store(out, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def w8a8_mm_gluon(q, w, xs, ws, bias, out, block_m: int = 128, block_n: int = 256, block_k: int = 128,
                  stages: int = 4, warps: int = 8, group_m: int = 8) -> torch.Tensor:
    """``triton_int8_mm.int8_mm_tma``'s product (whole tiles, K never split) through the Gluon
    kernel; ``q (M, K)``, ``w (N, K)`` int8 or E4M3, row-major with 16-byte aligned rows."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"this Triton has no Gluon: {_IMPORT_ERROR}")
    M, K = q.shape
    N = w.shape[0]
    int8 = q.dtype == torch.int8
    code = gl.int8 if int8 else gl.float8e4nv
    a_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_k], code)
    b_layout = gl.NVMMASharedLayout.get_default_for([block_n, block_k], code)
    a_desc = TensorDescriptor(q, [M, K], [q.stride(0), 1], [block_m, block_k], a_layout)
    b_desc = TensorDescriptor(w, [N, K], [w.stride(0), 1], [block_n, block_k], b_layout)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _w8a8_mm_gluon[grid](a_desc, b_desc, xs, ws, bias if bias is not None else xs, out, M, N, K, out.stride(0),
                         HAS_BIAS=bias is not None, STAGES=stages, GROUP_M=group_m, MMA_N=mma_n(block_n, int8),
                         INT8=int8, num_warps=warps, enable_fp_fusion=False)
    return out
