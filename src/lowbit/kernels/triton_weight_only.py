"""Weight-only QuantLinear on CUDA through Triton: pick a kernel per (shape, format, batch bucket).

The paths:
- ``gemv_half2``: 4-bit at batch 1 (and 2), two codes per instruction in packed float16
  arithmetic, x paired and scaled inside the kernel or by a small pass (``triton_gemv_half2``);
- ``gemv``: batch 1 without tensor cores (``triton_gemv``), and ``gemv_planes``, the same with
  fewer instructions per code after one small pass that regroups x (``triton_gemv_planes``): what
  8-bit layers take at batch 1;
- ``mma``: dequantize in registers and dot on tensor cores, split-K for small batches
  (``triton_mma``, any group);
- ``planes``: the same with cheaper dequantization, one dot per code position
  (``triton_mma_planes``, 4-bit groups ≥ 128, 8-bit groups ≥ 64 or per-channel);
- ``frag`` (opt-in, ``LOWBIT_FRAG_LAYOUT=1``): 4-bit from batch 2, tensor cores on a
  fragment-ordered second copy of the codes made once per layer (``triton_mma_frag``), which
  doubles the GPU memory of the layer's codes, hence off unless asked for;
- ``gluon`` (Hopper, 4-bit, bf16): from batch 65, a Gluon kernel fed by TMA that dequantizes each
  K step straight into ``wgmma``'s register operand and keeps one step's MMAs in flight
  (``gluon_w4a16_mm``; checkpoint layout, no copy);
- ``dequant``: dequantize the whole weight once per call (``triton_dequant``), then cuBLAS via
  ``F.linear``, which can win at large batch where the product, not the weight read, dominates.

The first call for a new (device, format, K, N, dtype, batch bucket) times every candidate under a
CUDA graph (so Python launch overhead does not decide) and caches the fastest; later calls, and
calls made while a CUDA graph is being captured, go straight to the cached choice (or, if none was
timed yet, to a fixed per-bucket default). Set ``LOWBIT_TRITON_TUNE=0`` to always use the defaults.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import gluon_w4a16_mm
from .dispatch import tuning_allowed
from .triton_dequant import dequantize
from .triton_gemv import gemv
from .triton_gemv_half2 import gemv_half2
from .triton_gemv_planes import gemv_planes
from .triton_layout import WeightLayout
from .triton_mma import mma
from .triton_mma_frag import frag_copies, frag_fits, mma_frag
from .triton_mma_pairs import mma_pairs
from .triton_mma_planes import mma_planes


@dataclass(frozen=True)
class KernelConfig:
    path: str                 # "gemv" | "gemv_planes" | "gemv_half2" | "mma" | "planes" | "pairs" |
                              # "frag" | "gluon" | "dequant"
    block_n: int = 64
    block_m: int = 16
    block_k: int = 128        # cap; the tile is also limited to divide the group size
    split_k: int = 1
    unroll: int = 1           # gemv paths: K tiles whose loads are issued together (half2: 2 =
                              # the next tile's loads issued before the current one is computed)
    num_warps: int = 4
    num_stages: int = 3
    fuse_x: bool = False      # gemv_half2 only: pair and scale x inside the GEMV (no input pass)
    maxnreg: int | None = None  # gemv_half2 only: register cap per thread (more warps per SM)
    group_m: int = 8          # gluon only: batch tiles sharing each weight tile while it is in L2
    prefetch: bool = False    # gluon only: read the next step's code words while this step's MMAs run
    sub: int = 1              # gluon only: 64-input sub-steps per pipeline step (2: K, groups in 128s)

    def label(self) -> str:
        if self.path == "dequant":
            return "dequant+cublas"
        m = f"u{self.unroll}" if self.path.startswith("gemv") else f"m{self.block_m}"
        return (f"{self.path} n{self.block_n}{m}k{self.block_k} s{self.split_k} "
                f"w{self.num_warps} st{self.num_stages}" + (" fx" if self.fuse_x else "")
                + (f" r{self.maxnreg}" if self.maxnreg else "")
                + (f" g{self.group_m}" if self.group_m != 8 else "") + (" pf" if self.prefetch else "")
                + (f" u{self.sub}" if self.sub != 1 else ""))


def batch_bucket(m: int) -> int:
    """Powers of two up to 4096; every batch in a bucket shares one tuned choice."""
    return min(1 << max(m - 1, 0).bit_length(), 4096)


# (rows per program, K tile, split-K, warps, x paired in the kernel, register cap) of the half2
# GEMV timed at batch 1 for 4-bit layers: the winners of bench/gemv_sweep.py on the H100 (small
# programs of one warp and 32 rows, K tiles of 256 inputs, split-K summed in the kernel), all
# prefetching. A register cap helped only the 16-row program on 4096x4096 (caps of 168 and 200
# on the 32-row ones spill and lose).
HALF2_M1 = [(32, 256, 1, 1, True, None), (32, 256, 2, 1, True, None), (32, 256, 4, 1, True, None),
            (32, 256, 8, 1, True, None), (16, 256, 8, 1, True, None), (32, 512, 8, 2, True, None),
            (64, 256, 1, 2, False, None), (16, 256, 4, 1, True, 168)]
# Batch 2 on CUDA cores (the codes unpacked once for both rows; x paired in the kernel or by a
# small pass): (rows per program, K tile, split-K, warps, x in the kernel). With x paired in the
# kernel each row has its own full-size accumulator, so one warp holds 16 rows (32 spill: 255
# registers and 304 bytes of stack in Triton 3.6's sm_90 build) or two warps 32. Batches of 4-8
# never beat the tensor-core kernels (bench/results/gemv-sweep-small-batch.json) and do not try.
HALF2_SMALL = {2: [(16, 256, 1, 1, True), (16, 256, 2, 1, True), (16, 256, 4, 1, True),
                   (16, 256, 8, 1, True), (32, 256, 2, 2, True), (32, 256, 4, 2, True),
                   (32, 256, 2, 1, False), (16, 256, 8, 1, False)]}


def candidates(m: int, bits: int = 4) -> list[KernelConfig]:
    """Configs worth timing for batch ``m`` (a short list: each one costs a compile).

    Decode is bound by the bytes in flight: each config trades rows per program (``block_n``),
    tiles issued together (``unroll``, pipelining ``num_stages``) and K splits (more programs
    for narrow N, at the cost of summing the splits). At batch 1, 4-bit layers take the half2
    GEMV, which beat every other batch-1 kernel at every measured shape; 8-bit layers the others.
    """
    b = batch_bucket(m)
    if b == 1 and bits == 4:
        return [KernelConfig("gemv_half2", block_n=bn, block_k=bk, unroll=2, split_k=s,
                             num_warps=w, num_stages=1, fuse_x=fx, maxnreg=r)
                for bn, bk, s, w, fx, r in HALF2_M1]
    if b == 1:
        return [
            KernelConfig("gemv", block_n=32, unroll=2, split_k=4, num_warps=4, num_stages=3),
            KernelConfig("gemv", block_n=64, unroll=2, split_k=8, num_warps=8, num_stages=3),
            KernelConfig("gemv", block_n=128, unroll=2, split_k=2, num_warps=4, num_stages=1),
            KernelConfig("gemv", block_n=16, unroll=4, split_k=4, num_warps=4, num_stages=1),
            KernelConfig("gemv_planes", block_n=128, unroll=2, split_k=1, num_warps=4, num_stages=1),
            KernelConfig("gemv_planes", block_n=128, unroll=2, split_k=2, num_warps=4, num_stages=1),
            KernelConfig("gemv_planes", block_n=128, unroll=1, split_k=4, num_warps=4, num_stages=3),
            KernelConfig("gemv_planes", block_n=64, unroll=2, split_k=4, num_warps=4, num_stages=1),
            KernelConfig("gemv_planes", block_n=256, unroll=1, split_k=4, num_warps=4, num_stages=1),
            KernelConfig("gemv_planes", block_n=32, unroll=4, split_k=4, num_warps=4, num_stages=1),
            KernelConfig("planes", block_n=64, block_m=16, split_k=4, num_stages=4),
        ]
    # the layouts' own kernels (opt-in fragment copy, Gluon on Hopper) first in every bucket
    first = frag_configs(b, bits) + gluon_configs(b, bits)
    if b <= 64:
        small = [KernelConfig("gemv_half2", block_n=bn, block_k=bk, unroll=2, split_k=s, num_warps=w,
                              num_stages=1, fuse_x=fx)
                 for bn, bk, s, w, fx in HALF2_SMALL.get(b, [])] if bits == 4 else []
        bm = max(16, b)
        planes = [
            KernelConfig("planes", block_n=64, block_m=bm, split_k=1, num_stages=4),
            KernelConfig("planes", block_n=64, block_m=bm, split_k=4, num_stages=4),
            KernelConfig("planes", block_n=128, block_m=bm, split_k=2, num_stages=4),
            KernelConfig("planes", block_n=128, block_m=bm, split_k=4, num_warps=8, num_stages=3),
            KernelConfig("planes", block_n=32, block_m=bm, split_k=2, num_stages=4),
        ]
        return small + first + planes + pairs_configs(b, bits) + [
            KernelConfig("mma", block_n=64, block_m=bm, split_k=4, num_stages=4),
            KernelConfig("mma", block_n=128, block_m=bm, split_k=4, num_warps=8, num_stages=3),
        ]
    if b <= 256:
        return first + [
            KernelConfig("planes", block_n=128, block_m=64, num_warps=4, num_stages=4),
            KernelConfig("planes", block_n=128, block_m=128, num_warps=8, num_stages=3),
            KernelConfig("planes", block_n=64, block_m=128, num_warps=4, num_stages=4),
            # K split, for layers with few output rows and long K (as in PAIRS_LARGE)
            KernelConfig("planes", block_n=64, block_m=128, split_k=2, num_warps=4, num_stages=4),
            KernelConfig("planes", block_n=64, block_m=128, split_k=4, num_warps=4, num_stages=4),
            KernelConfig("mma", block_n=128, block_m=128, block_k=64, num_warps=8, num_stages=3),
            KernelConfig("dequant"),
        ] + pairs_configs(b, bits)
    return first + pairs_configs(b, bits) + [
        KernelConfig("planes", block_n=128, block_m=128, num_warps=8, num_stages=3),
        KernelConfig("mma", block_n=128, block_m=256, block_k=64, num_warps=8, num_stages=3),
        KernelConfig("dequant"),
    ]


# The packed-pair tensor-core kernel (4-bit, scales in the input dtype), the configs that won
# somewhere in bench/gemv_sweep.py on the H100 (bench/results/gemv-sweep-pairs*.json): (rows per
# program, split-K, warps, stages) for batches up to 64; (rows, batch columns, warps, split-K)
# above. Computing out = x·W^T instead (the weight tile the dot's shared-memory operand, no
# register shuffle through shared memory) measured slower at every batch but one
# (gemv-sweep-pairs-xfirst). Split K at 128-256 rows: layers with few output rows and long K
# (down_proj's 14336×4096: 64 programs of 64 rows on 132 SMs) left half the GPU idle.
PAIRS_SMALL = ((64, 1, 4, 4), (64, 4, 4, 4), (128, 2, 8, 3), (128, 4, 8, 3))
PAIRS_LARGE = {256: ((64, 128, 4, 1), (128, 128, 8, 1), (64, 128, 4, 2), (64, 128, 4, 4)),
               4096: ((128, 256, 8, 1),)}


# The fragment-ordered tensor-core kernel (4-bit, scales in the input dtype): per batch bucket,
# (rows per program, K tile, split-K, stages, warps), the configs that won somewhere in
# bench/frag_sweep.py on the H100 (bench/results/frag-sweep.json, frag-sweep-large.json). From
# 256 rows, eight warps (two warpgroups: one dequantizes while the other's MMAs run) on 128-row
# programs take the wide layers; 64-row ones with split-K the narrow ones. (Eight warps with
# 128-column batch tiles won at 128 rows but computed wrong, run-to-run varying results:
# ``mma_frag`` refuses them, bench/frag_check.py shows it.)
FRAG = {16: ((64, 64, 2, 4, 4), (64, 64, 4, 4, 4), (64, 64, 8, 4, 4), (64, 64, 4, 3, 4),
             (64, 64, 8, 3, 4)),
        32: ((64, 64, 2, 4, 4), (64, 64, 4, 4, 4), (64, 64, 8, 4, 4)),
        64: ((64, 64, 2, 4, 4), (64, 64, 4, 4, 4), (128, 64, 1, 4, 4), (128, 64, 2, 4, 4)),
        128: ((64, 64, 2, 4, 4), (64, 64, 4, 4, 4), (128, 64, 1, 3, 4), (64, 128, 1, 3, 4)),
        256: ((64, 64, 2, 3, 4), (64, 64, 4, 3, 4), (128, 64, 1, 3, 8), (128, 64, 2, 3, 8)),
        4096: ((128, 64, 1, 3, 8), (128, 64, 1, 4, 8), (128, 64, 2, 3, 8))}


def frag_enabled() -> bool:
    """``LOWBIT_FRAG_LAYOUT=1``: trade a second copy of each 4-bit layer's codes (made on its
    first batch of 2 or more rows; a prompt's prefill is one) for 1.2-2.7x faster batches of
    2-256 rows."""
    return os.environ.get("LOWBIT_FRAG_LAYOUT", "0") == "1"


def frag_configs(b: int, bits: int) -> list[KernelConfig]:
    """``frag`` configs for batch bucket ``b`` (4-bit, batches of 2 and more, when switched on;
    batch tiles of up to 256 rows)."""
    if bits != 4 or b < 2 or not frag_enabled():
        return []
    key = max(16, b) if b <= 256 else 4096
    return [KernelConfig("frag", block_n=bn, block_m=min(256, max(16, b)), block_k=bk, split_k=s,
                         num_warps=w, num_stages=st) for bn, bk, s, st, w in FRAG[key]]


# The Gluon kernel (4-bit, Hopper, bf16): (weight rows, batch rows, stages, warps, grouped batch
# tiles, K split, code words read a step ahead, 64-input sub-steps per step), the configs that won
# in bench/w4a16_gluon_sweep.py on the H100 (bench/results/w4a16-gluon-sweep-prefetch.md): two
# warpgroups sharing a 256-row batch tile (the dequantization, paid per weight tile, spread over
# the most MMA work) from 256 rows, 128-row batch tiles at 128 (reading ahead: 8-23% faster
# there), and K split 4 or 2 ways for layers whose tiles alone leave SMs idle (14336×4096: 0.61 →
# 1.03× bf16 at 256 rows).
GLUON = ((128, 256, 4, 8, 16, 1, True, 1), (128, 128, 6, 8, 8, 1, True, 1), (128, 256, 4, 8, 8, 4, False, 1),
         (128, 256, 4, 8, 8, 2, True, 1))
# Batches of 2-64 (bench/results/w4a16-gluon-sweep-small.md, -sub2.md, -sub2-small.md): 64-row
# weight tiles on one warpgroup, batch tiles of 16-64 rows (the MMA's N), K split two or four ways.
# Two 64-input sub-steps per pipeline step (one barrier wait, refill and scale load per 128 inputs)
# won at 16-64 rows (2-16%; deeper pipelines and eight-way splits did not help), lost from 128
# (fewer stages fit); a one-sub-step config stays in each bucket for layers whose K or groups are
# not whole 128s. Against the dispatch's earlier choices (pairs, planes, the half2 GEMV): 1.1-1.3x
# at batches 4-64; the half2 GEMV keeps batch 2.
GLUON_SMALL = {16: ((64, 16, 4, 4, 8, 4, False, 2), (64, 16, 4, 4, 8, 2, False, 2), (64, 16, 8, 4, 8, 4, True, 1)),
               32: ((64, 32, 4, 4, 8, 4, False, 2), (64, 32, 4, 4, 8, 2, False, 2), (64, 32, 8, 4, 8, 2, True, 1)),
               64: ((64, 64, 4, 4, 8, 1, False, 2), (64, 64, 4, 4, 8, 2, False, 2), (128, 64, 6, 8, 8, 1, True, 1))}


def gluon_configs(b: int, bits: int) -> list[KernelConfig]:
    """``gluon`` configs for batch bucket ``b`` (4-bit, batches of 2 and more, where Gluon builds)."""
    if bits != 4 or b < 2 or not gluon_w4a16_mm.available():
        return []
    table = GLUON if b > 64 else GLUON_SMALL[max(16, b)]
    return [KernelConfig("gluon", block_n=bn, block_m=bm, block_k=gluon_w4a16_mm.BLOCK_K, split_k=sk, num_warps=w,
                         num_stages=st, group_m=g, prefetch=pf, sub=u) for bn, bm, st, w, g, sk, pf, u in table]


def pairs_configs(b: int, bits: int) -> list[KernelConfig]:
    """``pairs`` configs for batch bucket ``b`` (4-bit only; none at batch 1)."""
    if bits != 4 or b == 1:
        return []
    if b <= 64:
        return [KernelConfig("pairs", block_n=bn, block_m=max(16, b), split_k=s, num_warps=w,
                             num_stages=st) for bn, s, w, st in PAIRS_SMALL]
    return [KernelConfig("pairs", block_n=bn, block_m=bm, split_k=s, num_warps=w, num_stages=3)
            for bn, bm, w, s in PAIRS_LARGE[256 if b <= 256 else 4096]]


def default_config(m: int, bits: int = 4) -> KernelConfig:
    """The choice when nothing was timed (CPU interpreter, graph capture, tuning switched off)."""
    b = batch_bucket(m)
    if b == 1 and bits == 4:
        return KernelConfig("gemv_half2", block_n=32, block_k=256, unroll=2, split_k=2,
                            num_warps=1, num_stages=1, fuse_x=True)
    if b == 1:
        return KernelConfig("gemv", block_n=16, unroll=4, split_k=1, num_warps=4, num_stages=1)
    if b <= 64:
        return KernelConfig("mma", block_n=64, block_m=max(16, b), split_k=4, num_stages=4)
    return KernelConfig("mma", block_n=128, block_m=128, block_k=64, num_warps=8, num_stages=3)


def run_config(x2: torch.Tensor, layout: WeightLayout, bias, cfg: KernelConfig) -> torch.Tensor:
    """``x2 (M, K)`` times the layer's weight with one explicit config → ``(M, N)``."""
    if cfg.path == "gemv_half2":  # batch 1 and small batches (it checks its own limits)
        return gemv_half2(x2, layout, bias, cfg)
    if cfg.path in GEMV_PATHS:
        if x2.shape[0] != 1:
            raise ValueError("the gemv paths compute one row; use 'mma' for batches")
        return GEMV_PATHS[cfg.path](x2, layout, bias, cfg)
    if cfg.path == "mma":
        return mma(x2, layout, bias, cfg)
    if cfg.path == "planes":
        return mma_planes(x2, layout, bias, cfg)
    if cfg.path == "pairs":
        return mma_pairs(x2, layout, bias, cfg)
    if cfg.path == "frag":
        if not frag_fits(layout, x2):
            raise ValueError("the frag path takes 4-bit codes, groups of 64k and scales in the "
                             "input dtype")
        return mma_frag(x2, layout, *frag_copies(layout, x2.dtype), bias, cfg)
    if cfg.path == "gluon":
        if not gluon_w4a16_mm.runs_on(x2):
            raise ValueError("the gluon path runs on Hopper GPUs only (Gluon has no interpreter)")
        if not gluon_w4a16_mm.gluon_w4_fits(layout, x2):
            x2 = x2.contiguous()  # a batch with other strides than the tuned one's
        return gluon_w4a16_mm.w4a16_mm_gluon(x2, layout, bias, cfg.block_n, cfg.block_m, cfg.num_stages,
                                             group_m=cfg.group_m, warps=cfg.num_warps, split_k=cfg.split_k,
                                             prefetch=cfg.prefetch, sub=cfg.sub)
    if cfg.path == "dequant":
        return F.linear(x2, dequantize(layout, x2.dtype), None if bias is None else bias.to(x2.dtype))
    raise ValueError(f"unknown kernel path {cfg.path!r}")


GEMV_PATHS = {"gemv": gemv, "gemv_planes": gemv_planes}
_TUNED: dict[tuple, KernelConfig] = {}
TUNE_LOG: dict[tuple, dict[str, float]] = {}  # every timed candidate, for the benchmark's notes


def _tune_key(layout: WeightLayout, x2: torch.Tensor) -> tuple:
    return (x2.device.index, layout.bits, layout.group_size, layout.has_zero, layout.k, layout.n,
            x2.dtype, batch_bucket(x2.shape[0]))


def _graph_time_us(fns, calls: int = 20, replays: int = 5) -> float:
    """Median µs per call, ``calls`` calls cycling through ``fns`` captured in one CUDA graph (so
    Python launch overhead does not decide), the graph replayed ``replays`` times."""
    import time

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fns[0]()  # also compiles, outside the graph
    torch.cuda.synchronize()
    calls = max(2, min(calls, int(0.01 / max(time.perf_counter() - t0, 1e-6))))
    calls = -(-calls // len(fns)) * len(fns)  # every copy equally often
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


MAX_TUNE_COPIES = 32


def streaming_layouts(layout: WeightLayout) -> list[WeightLayout]:
    """The layer's layout and enough clones of its buffers (at least twice the L2 cache in all)
    that timing calls cycling through them reads the weights from memory, back to back, as a
    decode step does. With one layer's weights resident in L2 the tuner picked on 4096x14336 a
    batch-1 config at 15.9 µs that streamed at 20.9 µs (runner-up 17.1); with an L2 flush before
    every call, on 14336x4096 one that tuned 0.3 µs ahead and streamed 4 µs behind
    (bench/results/kernels-frag.md)."""
    if not layout.packed.is_cuda:
        return [layout]
    props = torch.cuda.get_device_properties(layout.packed.device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    tensors = [t for t in (layout.packed, layout.scale, layout.zero) if t is not None]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    copies = min(MAX_TUNE_COPIES, max(1, -(-2 * l2 // nbytes)))
    clones = [dataclasses.replace(layout, packed=layout.packed.clone(), scale=layout.scale.clone(),
                                  zero=None if layout.zero is None else layout.zero.clone())
              for _ in range(copies - 1)]
    return [layout] + clones


def _tune(x2: torch.Tensor, layout: WeightLayout, bias, key: tuple) -> KernelConfig:
    timings: dict[str, float] = {}
    best, best_us = None, float("inf")
    layouts = streaming_layouts(layout)
    for cfg in candidates(x2.shape[0], layout.bits):
        try:
            run_config(x2, layout, bias, cfg)  # compile outside the timed graph
            us = _graph_time_us([lambda lo=lo, cfg=cfg: run_config(x2, lo, bias, cfg)
                                 for lo in layouts])
        except Exception:  # a config the compiler rejects (e.g. out of shared memory)
            timings[cfg.label()] = float("nan")
            continue
        timings[cfg.label()] = us
        if us < best_us:
            best, best_us = cfg, us
    del layouts  # the clones (and any frag copies made of them) go with them
    TUNE_LOG[key] = timings
    # Nothing compiled (e.g. a Triton that rejects a kernel's inline assembly): the plain Triton
    # kernels of the 8-bit list read any code width the layout allows.
    return best or default_config(x2.shape[0], bits=8)


def choose_config(x2: torch.Tensor, layout: WeightLayout, bias) -> KernelConfig:
    key = _tune_key(layout, x2)
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    tune = (x2.is_cuda and os.environ.get("LOWBIT_TRITON_TUNE", "1") != "0" and tuning_allowed()
            and not torch.cuda.is_current_stream_capturing())
    if not tune:
        return default_config(x2.shape[0], layout.bits)
    cfg = _TUNED[key] = _tune(x2, layout, bias, key)
    return cfg


def weight_only_linear_triton(x: torch.Tensor, module, config: KernelConfig | None = None):
    """``x (..., K)`` times the module's dequantized weight ``(N, K)``, plus bias, via Triton.

    ``config`` forces one kernel (tests, benchmarks); by default the tuned choice for this batch.
    """
    return linear_on_layout(x, WeightLayout.of(module), module.bias, config)


def linear_on_layout(x: torch.Tensor, layout: WeightLayout, bias: torch.Tensor | None,
                     config: KernelConfig | None = None) -> torch.Tensor:
    """The same from the layer's buffers alone (what the ``lowbit::weight_only_linear`` custom
    operator receives)."""
    x2 = x.reshape(-1, layout.k)  # a view where strides allow; the kernels take any strides
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], layout.n)
    cfg = config or choose_config(x2, layout, bias)
    if (cfg.path == "frag" and x2.is_cuda and torch.cuda.is_current_stream_capturing()
            and frag_copies(layout, x2.dtype, build=False) is None):
        # no copy to read, and none may be allocated inside a graph: the per-bucket default
        cfg = default_config(x2.shape[0], layout.bits)
    out = run_config(x2, layout, bias, cfg)
    return out.reshape(*x.shape[:-1], layout.n)
