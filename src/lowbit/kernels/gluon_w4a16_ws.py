"""Warp-specialized variant of the Gluon W4A16 GEMM (``gluon_w4a16_mm``) for large batches.

The same arithmetic and register-operand ``wgmma`` as ``gluon_w4a16_mm`` (its docstring explains
the pairs and the K loop unrolled by two), with the work split between warps that do one thing:

- a loader warp issues every TMA copy (the codes' words of the 128-row weight tile and the
  ``(BM, 64)`` inputs of each K step) into ``STAGES`` shared-memory stages, waiting on a stage's
  ``empty`` barrier before refilling it;
- the consumer warps dequantize and run the MMAs. ``CONSUMERS = 2``: two warpgroups, 64 weight
  rows each, sharing the inputs' tile, each releasing a stage (one arrive on ``empty``) as soon as
  *its* MMAs on it are retired; ``CONSUMERS = 1``: one 8-warp partition on all 128 rows.

In the single-partition kernel every warp waits for every copy it issues through the CTA, and the
stage refill follows the MMA wait; here no warp ever waits for another consumer, and the copies
run ahead as far as the stages allow.

Triton 3.6 (the H100's) fails to compile some warp-specialized partitions: an assertion in its
axis analysis on loads of 16-bit values and on arguments that no partition uses. So the scales
and the bias (both bf16) are read through the 32-bit words holding them (the caller passes them
viewed as int32), the bias is added under a runtime flag (the load is always in the code), and an
absent zero point or bias pointer is given the scales' pointer. Triton before 3.6 spelled
``warp_specialize`` differently; ``available()`` accepts only the current spelling.
"""
from __future__ import annotations

import inspect

import torch
import triton

from .gluon_w4a16_mm import BLOCK_K, WORDS, _pair_layout, gluon_w4_fits, runs_on  # noqa: F401 - runs_on re-exported
from .gluon_w4a16_mm import available as _gluon_available

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from .gluon_w4a16_mm import _dequant
    from .gluon_w8a8_mm import _grouped, _tma_load
    _NEW_API = "functions_and_args" in inspect.signature(gl.warp_specialize).parameters
    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any failure means "no Gluon here"
    _IMPORT_ERROR = e
    _NEW_API = False

BLOCK_N = 128         # weight rows per program
LOADER_REGS = 24      # registers per thread the loader warp keeps (setmaxnreg)


def available() -> bool:
    """Gluon with ``warp_specialize(functions_and_args, ...)`` (Triton 3.6 and later)."""
    return _gluon_available() and _IMPORT_ERROR is None and _NEW_API


if _IMPORT_ERROR is None:
    _BN = gl.constexpr(BLOCK_N)
    _LOADER_REGS = gl.constexpr(LOADER_REGS)
    _pairs = gluon.constexpr_function(_pair_layout)   # layouts cannot travel in the partitions' arguments

    @gluon.jit
    def _row_params_words(s_ptr, z_ptr, rows, N, g, stride_sn, stride_zn, HAS_ZERO: gl.constexpr, WL: gl.constexpr):
        """``gluon_w4a16_mm._row_params`` for partitions: the bf16 scale read through its 32-bit word
        (``s_ptr`` is the scales viewed as int32) in a plain blocked layout, then moved to the
        dequantization's layout."""
        rc = gl.where(rows < N, rows, 0)
        off = rc * stride_sn + g
        sb = (gl.load(s_ptr + (off >> 1)) >> ((off & 1) * 16)) & 0xFFFF
        if HAS_ZERO:
            z = gl.load(z_ptr + rc * stride_zn + g)
        else:
            z = gl.full(rows.shape, 8, gl.int32, rows.type.layout)
        nzz = (((0x4300 + z) | 0x8000) & 0xFFFF) * 0x10001
        return gl.convert_layout(nzz, gl.SliceLayout(1, WL)), gl.convert_layout(sb * 0x10001, gl.SliceLayout(1, WL))

    @gluon.jit
    def _consume_step(k, k_tiles, w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, rows, N, group, stride_sn, stride_zn,
                      sel, nzz, ss, acc, p_prev, use_acc, STAGES: gl.constexpr, HAS_ZERO: gl.constexpr,
                      DOT: gl.constexpr, WL: gl.constexpr):
        """K step ``k``: wait for its stage, dequantize, issue its MMAs, retire the step before's and
        release that step's stage to the loader."""
        BK: gl.constexpr = x_bufs.type.shape[2]
        s = k % STAGES
        g_next = (gl.minimum(k + 1, k_tiles - 1) * BK) // group
        nzz_next, ss_next = _row_params_words(s_ptr, z_ptr, rows, N, g_next, stride_sn, stride_zn, HAS_ZERO, WL)
        mbarrier.wait(ready.index(s), (k // STAGES) & 1)
        a, p = _dequant(w_bufs.index(s).load(WL), sel, nzz, ss, DOT)
        acc = warpgroup_mma(a, x_bufs.index(s).permute((1, 0)), acc, use_acc=use_acc, is_async=True)
        acc, p_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, p_prev))
        # the step before's MMAs are retired: its stage may be refilled
        fence_async_shared()
        mbarrier.arrive(empty.index((k + STAGES - 1) % STAGES), count=1, pred=k > 0)
        return acc, p, nzz_next, ss_next

    @gluon.jit
    def _consumer(w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group, stride_sn,
                  stride_zn, stride_om, off_m, off_n, has_bias, HAS_ZERO: gl.constexpr,
                  STAGES: gl.constexpr):
        """Dequantize, multiply and store ``PAIRS``' rows (64 or 128) from ``off_n``."""
        W: gl.constexpr = gl.num_warps()
        R: gl.constexpr = 16 * W
        PAIRS: gl.constexpr = _pairs(W, R)
        BM: gl.constexpr = x_bufs.type.shape[1]
        BK: gl.constexpr = x_bufs.type.shape[2]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1],
                                                             instr_shape=[16, BM, 16])
        DOT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        WL: gl.constexpr = gl.SliceLayout(2, PAIRS)
        PLAIN: gl.constexpr = gl.BlockedLayout([1], [32], [W], [0])
        k_tiles = gl.cdiv(K, BK)
        rows = off_n + gl.arange(0, R, layout=PLAIN)
        # prmt selector for byte c: result bytes (c, c, 4 + c, 4 + c)
        sel = 0x4400 + 0x1111 * gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, PAIRS)))
        nzz, ss = _row_params_words(s_ptr, z_ptr, rows, N, 0, stride_sn, stride_zn, HAS_ZERO, WL)
        # step 0 outside the loop and the loop unrolled by two, as in gluon_w4a16_mm (its comments)
        acc, p, nzz, ss = _consume_step(0, k_tiles, w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, rows, N, group,
                                        stride_sn, stride_zn, sel, nzz, ss,
                                        gl.zeros((R, BM), dtype=gl.float32, layout=acc_layout),
                                        gl.zeros((R, BK // 8, 4), dtype=gl.int32, layout=PAIRS), False, STAGES,
                                        HAS_ZERO, DOT, WL)
        for k in range(1, k_tiles - 1, 2):
            acc, p1, nzz, ss = _consume_step(k, k_tiles, w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, rows, N, group,
                                             stride_sn, stride_zn, sel, nzz, ss, acc, p, True, STAGES, HAS_ZERO,
                                             DOT, WL)
            acc, p, nzz, ss = _consume_step(k + 1, k_tiles, w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, rows, N,
                                            group, stride_sn, stride_zn, sel, nzz, ss, acc, p1, True, STAGES,
                                            HAS_ZERO, DOT, WL)
        if k_tiles % 2 == 0:
            acc, p, nzz, ss = _consume_step(k_tiles - 1, k_tiles, w_bufs, x_bufs, ready, empty, s_ptr, z_ptr, rows,
                                            N, group, stride_sn, stride_zn, sel, nzz, ss, acc, p, True, STAGES,
                                            HAS_ZERO, DOT, WL)
        acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p))

        # the bias (bf16) through its 32-bit words; with no bias the flag masks the load off
        bn = off_n + gl.arange(0, R, layout=PLAIN)
        bw = gl.load(bias_ptr + (bn >> 1), mask=(bn < N) & (has_bias != 0), other=0)
        b = ((bw >> ((bn & 1) * 16)) & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True).to(gl.float32)
        acc = acc + gl.convert_layout(b, gl.SliceLayout(1, acc_layout))[:, None]
        # out[m, n] = acc[n, m], each thread storing 8 consecutive outputs of one batch row
        store: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[R // 8, 256 // R],
                                               warps_per_cta=[1, W], order=[0, 1])
        y = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), store)
        sn = off_n + gl.arange(0, R, layout=gl.SliceLayout(1, store))
        sm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, store))
        out = out_ptr + sm[None, :].to(gl.int64) * stride_om + sn[:, None]
        gl.store(out, y, mask=(sn[:, None] < N) & (sm[None, :] < M))

    @gluon.jit
    def _consumer_lo(w_desc, x_desc, w_lo, w_hi, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K,
                     group, stride_sn, stride_zn, stride_om, off_m, off_n, has_bias,
                     HAS_ZERO: gl.constexpr, STAGES: gl.constexpr):
        _consumer(w_lo, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group, stride_sn, stride_zn,
                  stride_om, off_m, off_n, has_bias, HAS_ZERO, STAGES)

    @gluon.jit
    def _consumer_hi(w_desc, x_desc, w_lo, w_hi, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K,
                     group, stride_sn, stride_zn, stride_om, off_m, off_n, has_bias,
                     HAS_ZERO: gl.constexpr, STAGES: gl.constexpr):
        _consumer(w_hi, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group, stride_sn, stride_zn,
                  stride_om, off_m, off_n + 16 * gl.num_warps(), has_bias, HAS_ZERO, STAGES)

    @gluon.jit
    def _loader(w_desc, x_desc, w_lo, w_hi, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group,
                stride_sn, stride_zn, stride_om, off_m, off_n, has_bias,
                HAS_ZERO: gl.constexpr, STAGES: gl.constexpr):
        """Fills stage ``k % STAGES`` with step ``k``'s codes and inputs once the consumers released it."""
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        WB: gl.constexpr = w_desc.block_type.shape[0]
        STEP_BYTES: gl.constexpr = _BN * BK // 2 + BM * BK * 2
        for k in range(gl.cdiv(K, BK)):
            s = k % STAGES
            # a fresh barrier passes a wait on the phase before its first: the first round goes free
            mbarrier.wait(empty.index(s), ((k // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), STEP_BYTES)
            _tma_load(w_desc, [off_n, k * (BK // 8)], ready.index(s), w_lo.index(s))
            if WB < _BN:
                _tma_load(w_desc, [off_n + WB, k * (BK // 8)], ready.index(s), w_hi.index(s))
            _tma_load(x_desc, [off_m, k * BK], ready.index(s), x_bufs.index(s))

    @gluon.jit
    def _w4a16_ws(w_desc, x_desc, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group, stride_sn, stride_zn, stride_om,
                  has_bias, HAS_ZERO: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, CONSUMERS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                  num_warps: gl.constexpr):
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        WB: gl.constexpr = w_desc.block_type.shape[0]   # weight rows per consumer
        w_lo = gl.allocate_shared_memory(w_desc.dtype, [STAGES, WB, BK // 8], w_desc.layout)
        if CONSUMERS == 2:
            w_hi = gl.allocate_shared_memory(w_desc.dtype, [STAGES, WB, BK // 8], w_desc.layout)
        else:
            w_hi = w_lo
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BM, BK], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=CONSUMERS)  # one arrive per consumer partition
        pid_m, pid_n = _grouped(gl.program_id(0), gl.cdiv(M, BM), gl.cdiv(N, _BN), GROUP_M)
        args = (w_desc, x_desc, w_lo, w_hi, x_bufs, ready, empty, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group,
                stride_sn, stride_zn, stride_om, pid_m * BM, pid_n * _BN, has_bias, HAS_ZERO, STAGES)
        if CONSUMERS == 2:
            gl.warp_specialize([(_consumer_lo, args), (_consumer_hi, args), (_loader, args)], [4, 1],
                               [CONSUMER_REGS, _LOADER_REGS])
        else:
            gl.warp_specialize([(_consumer_lo, args), (_loader, args)], [1], [_LOADER_REGS])


def _words(t: torch.Tensor) -> bool:
    """Whether the bf16 tensor ``t`` can be read through int32 words: contiguous, an even count,
    4-byte aligned."""
    return t.is_contiguous() and t.numel() % 2 == 0 and t.data_ptr() % 4 == 0


def ws_fits(layout, x: torch.Tensor, bias) -> bool:
    """``gluon_w4_fits``, and scales (and bias) readable as 32-bit words."""
    return (gluon_w4_fits(layout, x) and _words(layout.scale)
            and (bias is None or (bias.dtype == torch.bfloat16 and _words(bias))))


def w4a16_mm_gluon_ws(x: torch.Tensor, layout, bias, block_m: int = 256, stages: int = 4, group_m: int = 8,
                      consumers: int = 2, consumer_regs: int = 232) -> torch.Tensor:
    """``x (M, K)`` bf16 times the layer's 4-bit weight → ``(M, N)`` bf16, on 128-row weight tiles
    by ``block_m`` batch rows (the MMA's N, ≤ 256), ``consumers`` (1 or 2) consumer partitions
    (``consumer_regs``: the second's register budget per thread)."""
    if not available():
        raise RuntimeError("this Triton has no Gluon warp specialization (Triton 3.6 or later)")
    if consumers not in (1, 2) or block_m not in (64, 128, 256):
        raise ValueError(f"{consumers} consumer partitions on {block_m} batch rows: the kernel takes 1 or 2, "
                         "and 64–256 batch rows")
    if not ws_fits(layout, x, bias):
        raise ValueError("the warp-specialized Gluon W4A16 kernel takes 4-bit codes, bf16 inputs and scales "
                         f"(contiguous, an even count), K and groups in whole {BLOCK_K}-input steps, whole 128-row "
                         "weight tiles and 16-byte aligned rows")
    m, k = x.shape
    n = layout.n
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    rows = BLOCK_N // consumers
    warps = rows // 16            # per consumer partition: 16 weight rows per warp
    w_desc = TensorDescriptor(layout.packed, [n, layout.kw], [layout.packed.stride(0), 1], [rows, WORDS],
                              gl.NVMMASharedLayout.get_default_for([rows, WORDS], gl.int32))
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [block_m, BLOCK_K],
                              gl.NVMMASharedLayout.get_default_for([block_m, BLOCK_K], gl.bfloat16))
    scale_words = layout.scale.view(-1).view(torch.int32)
    bias_words = bias.view(torch.int32) if bias is not None else scale_words
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, BLOCK_N),)
    _w4a16_ws[grid](w_desc, x_desc, scale_words, layout.zero_or_dummy if layout.has_zero else scale_words,
                    bias_words, out, m, n, k, layout.group_for(BLOCK_K), layout.stride_s, layout.stride_z,
                    out.stride(0), int(bias is not None),
                    HAS_ZERO=layout.has_zero, STAGES=stages, GROUP_M=group_m, CONSUMERS=consumers,
                    CONSUMER_REGS=consumer_regs, num_warps=warps)
    return out
