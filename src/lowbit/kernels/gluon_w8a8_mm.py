"""The W8A8 GEMM of ``triton_int8_mm`` written in Gluon (Triton's explicit-layout dialect), for
int8 codes on Hopper at large M.

Why a second kernel: Triton issues a ``wgmma`` whose accumulator is not float32 synchronously (its
pipeliner only makes float32-accumulating dots asynchronous), so the int8 GEMM waits for each K
step's tensor-core work to finish before it issues the next one, and its tensor cores idle in
between; the E4M3 GEMM on the same tiles keeps one step in flight. On an H100 that left int8 at
1234 TOPS against E4M3's 1290 sustained under the board's power cap, and further behind in short
bursts (``bench/int8_vs_fp8_gemm.py``, ``bench/results/int8_vs_fp8_gemm.md``); this kernel took
the int8 GEMM 2–34% faster in the sweep (``bench/results/w8a8-tile-sweep-gluon.md``). Gluon exposes the
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
    def _stage(bufs, i, rows: gl.constexpr, HALF: gl.constexpr):
        if HALF:
            return bufs.index(i).slice(0, rows, dim=0)
        else:
            return bufs.index(i)

    @gluon.jit
    def _tile(a_desc, b_desc, a_bufs, b_bufs, ready, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
              off_m, off_n, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, MMA_N: gl.constexpr, INT8: gl.constexpr,
              STORE_TPW_N: gl.constexpr, HALF: gl.constexpr, num_warps: gl.constexpr):
        """One output tile: the K loop over ``STAGES`` shared-memory stages, then the scaled store.
        ``HALF``: a half-width tile (``b_desc``'s rows) in the first rows of ``b_bufs``' stages."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        # every warp takes 16 rows: a warpgroup 64 rows by all BLOCK_N columns; K 32 codes per instruction
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, MMA_N, 32])
        k_tiles = gl.cdiv(K, BLOCK_K)
        nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # one byte per code
        for i in gl.static_range(STAGES - 1):  # the first STAGES - 1 K tiles in flight
            pred = i < k_tiles
            mbarrier.expect(ready.index(i), nbytes, pred=pred)
            _tma_load(a_desc, [off_m, i * BLOCK_K], ready.index(i), a_bufs.index(i), pred=pred)
            _tma_load(b_desc, [off_n, i * BLOCK_K], ready.index(i), _stage(b_bufs, i, BLOCK_N, HALF), pred=pred)
        if INT8:
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
        else:
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=layout)
        for k in range(k_tiles):
            s = k % STAGES
            mbarrier.wait(ready.index(s), (k // STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(s), _stage(b_bufs, s, BLOCK_N, HALF).permute((1, 0)), acc, is_async=True)
            # one step's MMAs stay in flight; the step before is done, so its stage can be refilled
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            nk = k + STAGES - 1
            ns = nk % STAGES
            pred = nk < k_tiles
            mbarrier.expect(ready.index(ns), nbytes, pred=pred)
            _tma_load(a_desc, [off_m, nk * BLOCK_K], ready.index(ns), a_bufs.index(ns), pred=pred)
            _tma_load(b_desc, [off_n, nk * BLOCK_K], ready.index(ns), _stage(b_bufs, ns, BLOCK_N, HALF), pred=pred)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

        # triton_int8_mm._store_scaled's arithmetic: (acc · s_x) · s_w (+ bias), no FMA contraction;
        # the result then moves to rows of 16-byte pieces (coalesced stores) through shared memory
        offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        rm = gl.where(offs_m < M, offs_m, 0)  # clamped: scale loads stay in bounds, stores are masked
        rn = gl.where(offs_n < N, offs_n, 0)
        y = acc.to(gl.float32) * gl.load(xs_ptr + rm)[:, None] * gl.load(ws_ptr + rn).to(gl.float32)[None, :]
        if HAS_BIAS:
            y = y + gl.load(bias_ptr + rn).to(gl.float32)[None, :]
        store: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // STORE_TPW_N, STORE_TPW_N],
                                               warps_per_cta=[num_warps, 1], order=[1, 0])
        y = gl.convert_layout(y.to(out_ptr.dtype.element_ty), store)
        sm = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, store))
        sn = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, store))
        out = out_ptr + sm[:, None].to(gl.int64) * stride_om + sn[None, :]
        gl.store(out, y, mask=(sm[:, None] < M) & (sn[None, :] < N))

    @gluon.jit
    def _grouped(tile, n_m, n_n, GROUP_M: gl.constexpr):
        # triton_int8_mm._tile_coords, written in Gluon's dialect: grouped tile order, GROUP_M row
        # tiles sharing each column tile while it is in L2.
        per_group = GROUP_M * n_n
        first_m = (tile // per_group) * GROUP_M
        rows_in_group = gl.minimum(n_m - first_m, GROUP_M)
        return first_m + (tile % per_group) % rows_in_group, (tile % per_group) // rows_in_group

    @gluon.jit
    def _w8a8_mm_gluon(a_desc, b_desc, b_half_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, N_MAIN, stride_om,
                       HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, SPLIT_TAIL: gl.constexpr,
                       MMA_N: gl.constexpr, MMA_N_HALF: gl.constexpr, INT8: gl.constexpr, num_warps: gl.constexpr):
        # Programs [0, main) take BLOCK_N-wide tiles of columns [0, N_MAIN); with SPLIT_TAIL the rest
        # take half-width tiles of [N_MAIN, N), in the first half of the same stage buffers.
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        pid = gl.program_id(0)
        n_m = gl.cdiv(M, BLOCK_M)
        n_main = gl.cdiv(N_MAIN, BLOCK_N)
        if not SPLIT_TAIL:
            pid_m, pid_n = _grouped(pid, n_m, n_main, GROUP_M)
            _tile(a_desc, b_desc, a_bufs, b_bufs, ready, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                  pid_m * BLOCK_M, pid_n * BLOCK_N, HAS_BIAS, STAGES, MMA_N, INT8, 32, False, num_warps)
        elif pid < n_m * n_main:
            pid_m, pid_n = _grouped(pid, n_m, n_main, GROUP_M)
            _tile(a_desc, b_desc, a_bufs, b_bufs, ready, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                  pid_m * BLOCK_M, pid_n * BLOCK_N, HAS_BIAS, STAGES, MMA_N, INT8, 32, False, num_warps)
        else:
            pid_m, pid_n = _grouped(pid - n_m * n_main, n_m, gl.cdiv(N - N_MAIN, BLOCK_N // 2), GROUP_M)
            _tile(a_desc, b_half_desc, a_bufs, b_bufs, ready, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                  pid_m * BLOCK_M, N_MAIN + pid_n * (BLOCK_N // 2), HAS_BIAS, STAGES, MMA_N_HALF, INT8, 16, True,
                  num_warps)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))


def w8a8_mm_gluon(q, w, xs, ws, bias, out, block_m: int = 128, block_n: int = 256, block_k: int = 128,
                  stages: int = 4, warps: int = 8, group_m: int = 8, main: int | None = None) -> torch.Tensor:
    """``triton_int8_mm.int8_mm_tma``'s product (K never split) through the Gluon kernel: ``q (M,
    K)``, ``w (N, K)`` int8 or E4M3, row-major with 16-byte aligned rows; columns from ``main``
    (default: all of them) in half-width tiles. ``block_n`` 256 (the stores assume 256 and 128)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"this Triton has no Gluon: {_IMPORT_ERROR}")
    M, K = q.shape
    N = w.shape[0]
    main = N if main is None else main
    int8 = q.dtype == torch.int8
    code = gl.int8 if int8 else gl.float8e4nv
    a_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_k], code)
    b_layout = gl.NVMMASharedLayout.get_default_for([block_n, block_k], code)
    half_layout = gl.NVMMASharedLayout.get_default_for([block_n // 2, block_k], code)
    a_desc = TensorDescriptor(q, [M, K], [q.stride(0), 1], [block_m, block_k], a_layout)
    b_desc = TensorDescriptor(w, [N, K], [w.stride(0), 1], [block_n, block_k], b_layout)
    b_half_desc = TensorDescriptor(w, [N, K], [w.stride(0), 1], [block_n // 2, block_k], half_layout)
    n_m = triton.cdiv(M, block_m)
    grid = (n_m * triton.cdiv(main, block_n) + n_m * triton.cdiv(N - main, block_n // 2),)
    _w8a8_mm_gluon[grid](a_desc, b_desc, b_half_desc, xs, ws, bias if bias is not None else xs, out, M, N, K, main,
                         out.stride(0), HAS_BIAS=bias is not None, STAGES=stages, GROUP_M=group_m,
                         SPLIT_TAIL=main < N, MMA_N=mma_n(block_n, int8), MMA_N_HALF=mma_n(block_n // 2, int8),
                         INT8=int8, num_warps=warps, enable_fp_fusion=False)
    return out
