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
layout 8-bit MMAs want). ``x_scale (M,)`` float32, ``w_scale (N,)`` in its stored float dtype
(widened exactly in the epilogue). The accumulator is exact
(|codes| ≤ 127, K < 2^17 keeps it inside int32) and the epilogue is the reference's arithmetic in
float32, ``acc · s_x · s_w (+ bias)``, in the same order, so results equal the reference's.
The TMA kernels take E4M3 codes as well (``fp8_mm_scaled``): a float32 accumulator, the tensor
cores' own (fast) accumulation of E4M3 products, the same epilogue; FP8 layers use them where
``fp8_prefers_tma`` says so.

Two kernels, one arithmetic:
- ``_int8_mm_tma`` (compute capability 9.0+, K a multiple of 16): tiles arrive through the
  bulk tensor copy engine (host-side TMA descriptors), which frees the warps from address
  arithmetic (the layer at M = 256 on 4096×14336 went from 43.7 to 36.4 µs on an H100). Two tile
  shapes measured on an H100, chosen by how many tiles the product has (``tma_tiles_for``). When
  the last wave of full-width tiles would leave many SMs idle (M = 1024 on N = 14336: 448 tiles
  of 128×256 on 132 SMs is 3.4 waves, run as 4), the columns past the last full wave are done in
  half-width tiles in the same launch, so the tail costs half a wave instead of a whole one.
- ``_int8_mm_tma_splitk``: the same tiles with K split across programs when the tiles would
  fill less than half the SMs (``split_k_for``); each split writes its int32 partial sum and the
  last to arrive adds them (exact) and applies the epilogue, so the result is unchanged.
- ``_int8_mm_ptr``: pointer loads, autotuned per (M bucket, N, K); older GPUs and odd K. Call
  once outside a CUDA graph capture (the benchmark's warm-up does) before capturing.

int8 products on the wide tiles with K not split go to the same kernel written in Gluon
(``gluon_w8a8_mm``) where this Triton has it: Triton waits for every int32-accumulating MMA
before issuing the next K step, Gluon lets one step stay in flight. ``LOWBIT_W8A8_GLUON=0``
keeps them on the Triton kernel; a Gluon kernel that fails to build does so too, with a warning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (Triton ≥ 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer kernel only
    TensorDescriptor = None

from .triton_layout import pdl_launch, tma_rows  # noqa: F401 - tma_rows: callers read it here too
from .triton_pdl import gdc_wait
from .triton_splitk import split_counters, split_tiles

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MIN_SPLIT_TILES = 8   # K tiles per split at least (a split's pipeline needs a few to fill)
MAX_SPLIT_K = 8


@dataclass(frozen=True)
class Tiles:
    """One launch shape of the TMA kernel: tile sizes, pipeline depth, warps, and whether the
    last partial wave runs in half-width tiles (``split_tail``)."""
    block_m: int
    block_n: int
    block_k: int
    stages: int
    warps: int
    split_tail: bool = False
    group_m: int = 8
    # One program per SM looping over the tiles (``_int8_mm_tma_persistent``): the next tile's
    # first loads are issued while this one's epilogue runs.
    persistent: bool = False


# The launch shapes, measured on an H100 (bench/w8a8_tile_sweep.py: CUDA graphs, weights rotated
# out of L2). Wide tiles when they fill at least half a wave: on 4096×14336 at M = 256, 1024 and
# 4096 they beat 128×128 and 64×256 tiles, 3 stages and Triton's warp specialization
# (bench/results/w8a8-tile-sweep.md). Fewer wide tiles than that (a long K and few columns:
# down_proj's 14336×4096 below M ≈ 512, or M = 128 on 4096×14336) take 128×128 tiles, with K split
# across programs when even those are few (``split_k_for``): 14336×4096 at M = 256 went from
# 84.6 to 43.2 µs (bench/results/w8a8-tile-sweep-splitk.md).
WIDE_TILES = Tiles(128, 256, 128, 4, 8, split_tail=True)
NARROW_TILES = Tiles(128, 128, 128, 4, 8)
# A few rows (3 to ``SMALL_MAX_M``, above the decode GEMV): one warpgroup on 64-row tiles, K split
# when they are few. Per layer 1.03-1.32x the ``torch._int_mm`` path on the three big shapes at
# M = 3-96 (bench/results/w8a8-tile-sweep-small-m.md).
SMALL_TILES = Tiles(64, 128, 128, 4, 4)
SMALL_MAX_M = 96

INTERPRET_TILES = Tiles(32, 32, 32, 1, 4)


def _m_bucket(M: int) -> int:
    return 1 << max(M - 1, 0).bit_length()


@triton.jit
def _tile_coords(tile, n_m, n_n, GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row tiles share each column tile while it is in L2.
    per_group = GROUP_M * n_n
    first_m = (tile // per_group) * GROUP_M
    rows_in_group = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % rows_in_group
    pid_n = (tile % per_group) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _store_scaled(acc, offs_m, offs_n, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, stride_om,
                  HAS_BIAS: tl.constexpr):
    rm = tl.where(offs_m < M, offs_m, 0)  # clamped: scale loads stay in bounds, stores are masked
    rn = tl.where(offs_n < N, offs_n, 0)
    y = acc.to(tl.float32) * tl.load(xs_ptr + rm)[:, None] * tl.load(ws_ptr + rn).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _tma_tile(q_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om, off_m, off_n,
              HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              ACC: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in tl.range(0, tl.cdiv(K, BLOCK_K)):  # the descriptors zero-fill past K, M and N: no masks
        a = q_desc.load([off_m, k * BLOCK_K])
        b = w_desc.load([off_n, k * BLOCK_K])
        acc = tl.dot(a, b.T, acc, out_dtype=ACC)
    _store_scaled(acc, off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N), xs_ptr, ws_ptr, bias_ptr,
                  out_ptr, M, N, stride_om, HAS_BIAS)


@triton.jit
def _int8_mm_tma(q_desc, w_desc, w_half_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, N_MAIN, stride_om,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, SPLIT_TAIL: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr = False):
    # Programs [0, main) take BLOCK_N-wide tiles of columns [0, N_MAIN); with SPLIT_TAIL the rest
    # take half-width tiles of [N_MAIN, N). PDL: launched while the input pass drains; its codes
    # and scales are read only after it has finished.
    if PDL:
        gdc_wait()
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_main = tl.cdiv(N_MAIN, BLOCK_N)
    if not SPLIT_TAIL:
        pid_m, pid_n = _tile_coords(pid, n_m, n_main, GROUP_M)
        _tma_tile(q_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om, pid_m * BLOCK_M,
                  pid_n * BLOCK_N, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    elif pid < n_m * n_main:
        pid_m, pid_n = _tile_coords(pid, n_m, n_main, GROUP_M)
        _tma_tile(q_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om, pid_m * BLOCK_M,
                  pid_n * BLOCK_N, HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    else:
        pid_m, pid_n = _tile_coords(pid - n_m * n_main, n_m, tl.cdiv(N - N_MAIN, BLOCK_N // 2), GROUP_M)
        _tma_tile(q_desc, w_half_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om, pid_m * BLOCK_M,
                  N_MAIN + pid_n * (BLOCK_N // 2), HAS_BIAS, BLOCK_M, BLOCK_N // 2, BLOCK_K, ACC)


@triton.jit
def _int8_mm_tma_persistent(q_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                            HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
                            ACC: tl.constexpr, PDL: tl.constexpr = False):
    # Tiles in grouped order, program p taking p, p + NUM_PROGRAMS, ...; the tile loop and the K
    # loop are flattened into one software pipeline, so loads run ahead across tile boundaries.
    if PDL:
        gdc_wait()
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), n_m * n_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _tile_coords(tile, n_m, n_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k in range(k_tiles):
            a = q_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
            b = w_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=ACC)
        _store_scaled(acc, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N),
                      xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS)


@triton.jit
def _int8_mm_tma_splitk(q_desc, w_desc, xs_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr, M, N, K,
                        stride_om, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, ACC: tl.constexpr,
                        PDL: tl.constexpr = False):
    # Program (tile, s) sums K tiles [first, last) of its output tile into a slice part[s] (int32;
    # float32 for E4M3); the last split to arrive at the tile (its arrival counter) adds the slices
    # in split order — for int8 the one-pass accumulator exactly, for E4M3 a fixed order, so
    # repeatable — and applies the epilogue, then resets the counter for the next call.
    if PDL:
        gdc_wait()
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    pid_m, pid_n = _tile_coords(pid, n_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    first, last = split_tiles(K, BLOCK_K, SPLIT_K, tl.program_id(1))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in tl.range(first, last):
        a = q_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
        b = w_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
        acc = tl.dot(a, b.T, acc, out_dtype=ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    slice_size = tl.cast(M, tl.int64) * N  # (tl.cast: M = 1 arrives as a constant)
    tl.store(part_ptr + tl.program_id(1) * slice_size + offs, acc, mask=mask)
    tl.debug_barrier()  # every thread's slice is written before the counter moves
    arrived = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLIT_K - 1:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(part_ptr + s * slice_size + offs, mask=mask, other=0, cache_modifier=".cg")
        _store_scaled(acc, offs_m, offs_n, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS)
        tl.atomic_xchg(cnt_ptr + pid, 0, sem="relaxed", scope="gpu")


def split_k_for(M: int, N: int, K: int, tiles: Tiles, sms: int) -> int:
    """K splits for a launch whose tiles fill less than half the SMs (a long K, few rows and
    columns: ``down_proj`` at a few hundred tokens, 32 tiles of 128×256 on 132 SMs at M = 256 on
    14336×4096): as many as fill about one wave, each at least ``MIN_SPLIT_TILES`` K tiles, at
    most ``MAX_SPLIT_K``."""
    n_tiles = triton.cdiv(M, tiles.block_m) * triton.cdiv(N, tiles.block_n)
    if tiles.persistent or 2 * n_tiles > sms:
        return 1
    by_k = triton.cdiv(K, tiles.block_k) // MIN_SPLIT_TILES
    return max(1, min(MAX_SPLIT_K, sms // n_tiles, by_k))


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def main_columns(M: int, N: int, tiles: Tiles, sms: int) -> int:
    """Columns done in full-width tiles; the rest go to half-width tiles. With ``split_tail``,
    when the tiles fill at least one wave (a wave is ``sms`` tiles) and end in a partial one, the
    full-width part is the whole columns of tiles that fit in the full waves, provided the
    half-width tiles of the rest fit in one wave: where they would not, halving the tail's tiles
    saves no wave and costs their lower efficiency (14336×4096 at M = 4096, 512 tiles: 4 columns
    of 32 left, 256 half-width tiles; 426 µs split, 383 not)."""
    n_m, n_n = triton.cdiv(M, tiles.block_m), triton.cdiv(N, tiles.block_n)
    full_waves = n_m * n_n // sms
    if not tiles.split_tail or full_waves == 0 or (n_m * n_n) % sms == 0:
        return N
    main = min(N, full_waves * sms // n_m * tiles.block_n)
    half_tiles = n_m * triton.cdiv(N - main, tiles.block_n // 2)
    return main if half_tiles <= sms else N


def tma_device(device: torch.device) -> bool:
    """Hopper or newer (the copy engine's tensor descriptors), or the interpreter."""
    if TensorDescriptor is None:
        return False
    return INTERPRET or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0))


def tma_supported(q: torch.Tensor, w: torch.Tensor) -> bool:
    """Hopper or newer, and rows the copy engine can address (``tma_rows``)."""
    return tma_device(q.device) and tma_rows(q) and tma_rows(w)


def int8_mm_tma(q, w, xs, ws, bias, out, tiles: Tiles, sms: int | None = None,
                split_k: int | None = None, main: int | None = None) -> torch.Tensor:
    """TMA kernel with ``tiles``; ``sms`` (default: the device's SM count) sizes a wave;
    ``split_k`` (default: ``split_k_for``) splits K across programs when the tiles are few;
    ``main`` (default: ``main_columns``) is how many columns take full-width tiles."""
    M, K = q.shape
    N = w.shape[0]
    sms = sms or sm_count(q.device)
    acc = tl.float32 if q.dtype == torch.float8_e4m3fn else tl.int32  # E4M3 products sum in float32
    q_desc = TensorDescriptor(q, [M, K], [q.stride(0), 1], [tiles.block_m, tiles.block_k])
    w_desc = TensorDescriptor(w, [N, K], [w.stride(0), 1], [tiles.block_n, tiles.block_k])
    split = split_k_for(M, N, K, tiles, sms) if split_k is None else split_k
    n_tiles = triton.cdiv(M, tiles.block_m) * triton.cdiv(N, tiles.block_n)
    counters = split_counters(q.device, n_tiles) if split > 1 else None
    if counters is not None:
        part = torch.empty(split, M, N, dtype=torch.int32 if acc == tl.int32 else torch.float32, device=q.device)
        _int8_mm_tma_splitk[(n_tiles, split)](
            q_desc, w_desc, xs, ws, bias if bias is not None else xs, out, part, counters, M, N, K,
            out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
            BLOCK_K=tiles.block_k, GROUP_M=tiles.group_m, SPLIT_K=split, ACC=acc, num_stages=tiles.stages,
            num_warps=tiles.warps, **pdl_launch(q))
        return out
    if tiles.persistent:
        programs = min(sms, triton.cdiv(M, tiles.block_m) * triton.cdiv(N, tiles.block_n))
        _int8_mm_tma_persistent[(programs,)](
            q_desc, w_desc, xs, ws, bias if bias is not None else xs, out, M, N, K, out.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
            GROUP_M=tiles.group_m, NUM_PROGRAMS=programs, ACC=acc, num_stages=tiles.stages, num_warps=tiles.warps,
            **pdl_launch(q))
        return out
    n_main = main_columns(M, N, tiles, sms) if main is None else main
    w_half_desc = TensorDescriptor(w, [N, K], [w.stride(0), 1], [tiles.block_n // 2, tiles.block_k])
    n_m = triton.cdiv(M, tiles.block_m)
    grid = (n_m * triton.cdiv(n_main, tiles.block_n) + n_m * triton.cdiv(N - n_main, tiles.block_n // 2),)
    _int8_mm_tma[grid](q_desc, w_desc, w_half_desc, xs, ws, bias if bias is not None else xs, out, M, N, K, n_main,
                       out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                       BLOCK_K=tiles.block_k, GROUP_M=tiles.group_m, SPLIT_TAIL=n_main < N, ACC=acc,
                       num_stages=tiles.stages, num_warps=tiles.warps, **pdl_launch(q))
    return out


def fp8_prefers_tma(M: int, N: int, sms: int) -> bool:
    """Whether an E4M3 product of ``M`` rows and ``N`` columns runs faster here than on
    ``torch._scaled_mm``: where the launch takes the small or the wide tiles. With the narrow ones
    (few wide tiles: ``down_proj``'s 14336×4096 at 128-512 tokens) cuBLAS measured faster
    (bench/results/w8a8-kernels-fp8-gemm.md)."""
    return choose_tiles(M, N, sms) is not NARROW_TILES


def tma_tiles_for(M: int, N: int, sms: int) -> Tiles:
    return INTERPRET_TILES if INTERPRET else choose_tiles(M, N, sms)


def choose_tiles(M: int, N: int, sms: int) -> Tiles:
    """``SMALL_TILES`` up to ``SMALL_MAX_M`` rows; then ``WIDE_TILES`` when they fill at least
    half of the ``sms``, else ``NARROW_TILES``."""
    if M <= SMALL_MAX_M:
        return SMALL_TILES
    wide = triton.cdiv(M, WIDE_TILES.block_m) * triton.cdiv(N, WIDE_TILES.block_n)
    return WIDE_TILES if 2 * wide >= sms else NARROW_TILES


# ---------------------------------------------------------------- pointer loads (pre-Hopper)

_PTR_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=5, num_warps=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
]
if INTERPRET:
    # The interpreter runs every config when tuning: one small tile keeps CPU tests quick and
    # still crosses tile edges on small shapes.
    _PTR_CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2})]


@triton.jit
def _int8_mm_ptr_kernel(q_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, M_BUCKET,
                        stride_qm, stride_wn, stride_om, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
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
    _store_scaled(acc, offs_m, offs_n, xs_ptr, ws_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS)


_int8_mm_ptr = triton.autotune(configs=_PTR_CONFIGS, key=["M_BUCKET", "N", "K"])(_int8_mm_ptr_kernel)


def int8_mm_ptr(q, w, xs, ws, bias, out, config: dict | None = None) -> torch.Tensor:
    """Pointer-load kernel; ``config`` (BLOCK_M/N/K, GROUP_M, num_stages, num_warps) skips tuning."""
    M, K = q.shape
    N = w.shape[0]
    kernel = _int8_mm_ptr if config is None else _int8_mm_ptr_kernel
    meta = config or {}

    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)

    kernel[grid](q, w, xs, ws, bias if bias is not None else xs, out, M, N, K, _m_bucket(M), q.stride(0),
                 w.stride(0), out.stride(0), HAS_BIAS=bias is not None, **meta)
    return out


def _scaled_operands(q, w, x_scale, w_scale, dtype):
    q, w = q.contiguous(), w.contiguous()
    xs = x_scale.reshape(-1).float().contiguous()
    # Read in their stored dtype (a model's bf16 scales widen exactly in the epilogue): a
    # conversion here would be one more launch per layer, and caching it on the module put a
    # data-pointer check in the traced step (a graph break per layer under torch.compile).
    ws = w_scale.reshape(-1).contiguous()
    return q, w, xs, ws, torch.empty(q.shape[0], w.shape[0], device=q.device, dtype=dtype)


_GLUON = {"broken": os.environ.get("LOWBIT_W8A8_GLUON", "1") == "0"}


def gluon_takes(q: torch.Tensor, N: int, tiles: Tiles, sms: int) -> bool:
    """Whether an int8 product goes to the Gluon kernel: on a GPU (Gluon has no interpreter), the
    wide tiles, K not split, Gluon importable and not turned off or found broken."""
    if _GLUON["broken"] or INTERPRET or q.dtype != torch.int8 or tiles is not WIDE_TILES:
        return False
    if split_k_for(q.shape[0], N, q.shape[1], tiles, sms) > 1:
        return False
    from . import gluon_w8a8_mm

    return gluon_w8a8_mm.available()


def _gluon_int8(q, w, xs, ws, bias, out, tiles: Tiles, sms: int) -> torch.Tensor | None:
    from . import gluon_w8a8_mm

    try:
        return gluon_w8a8_mm.w8a8_mm_gluon(q, w, xs, ws, bias, out, tiles.block_m, tiles.block_n, tiles.block_k,
                                           tiles.stages, tiles.warps, tiles.group_m,
                                           main=main_columns(q.shape[0], w.shape[0], tiles, sms))
    except Exception as e:  # noqa: BLE001 - an experimental dialect: any build failure means "use Triton"
        import warnings

        _GLUON["broken"] = True
        warnings.warn(f"lowbit: the Gluon int8 GEMM did not build ({type(e).__name__}: {str(e)[:200]}); "
                      "using the Triton kernel", RuntimeWarning, stacklevel=3)
        return None


def int8_mm_scaled(q: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``(q @ wᵀ) · x_scale · w_scaleᵀ (+ bias)`` in ``dtype``: ``q (M, K)``, ``w (N, K)`` int8;
    ``x_scale`` ``M`` values, ``w_scale`` ``N`` values (any shape holding them)."""
    q, w, xs, ws, out = _scaled_operands(q, w, x_scale, w_scale, dtype)
    if tma_supported(q, w):
        sms = sm_count(q.device)
        tiles = tma_tiles_for(q.shape[0], w.shape[0], sms)
        if gluon_takes(q, w.shape[0], tiles, sms):
            y = _gluon_int8(q, w, xs, ws, bias, out, tiles, sms)
            if y is not None:
                return y
        return int8_mm_tma(q, w, xs, ws, bias, out, tiles, sms)
    return int8_mm_ptr(q, w, xs, ws, bias, out)


def fp8_mm_scaled(q: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``int8_mm_scaled`` for E4M3 codes (``torch.float8_e4m3fn``): the same TMA kernels, the
    products summed in float32 (each is exact there; the sums round as the tensor cores' do, as
    in ``torch._scaled_mm``). TMA devices only (``tma_supported``)."""
    q, w, xs, ws, out = _scaled_operands(q, w, x_scale, w_scale, dtype)
    if not tma_supported(q, w):
        raise ValueError("fp8_mm_scaled needs a GPU with TMA (Hopper or newer) and 16-byte aligned rows")
    sms = sm_count(q.device)
    return int8_mm_tma(q, w, xs, ws, bias, out, tma_tiles_for(q.shape[0], w.shape[0], sms), sms)
