"""4-bit weight-only GEMM in Gluon for Hopper at large batches, on the checkpoint layout.

``out^T = W · x^T`` as the Triton tensor-core kernels compute it (the weight tile is the MMA's
first operand):

- TMA brings each K step's inputs ``(BM, 64)`` and the codes' words ``(BN, 8)`` (the checkpoint's
  int32 words, 8 codes each, least significant first) into ``STAGES`` shared-memory stages;
- each thread dequantizes whole words: one shift, four ``prmt`` and four ``lop3`` give four bf16
  pairs ``(128 + q, 128 + q')``, four packed FMAs subtract ``128 + zero`` (exact) and four multiply
  by the row's scale (one rounding: the reference's bits; ``triton_mma_pairs`` explains the trick);
- the bf16 tile goes to one of two shared-memory buffers and ``wgmma`` reads both operands from
  shared memory; ``warpgroup_mma_wait(num_outstanding=1)`` keeps one step's MMAs running while the
  next step's tile is dequantized into the other buffer.

Why not the register operand (``wgmma`` with A in registers, as Machete does): an MMA reads its
registers while in flight, and neither Gluon's dependency list nor ptxas kept them from being
reused for the next step's tile; on the H100 the 128×256 tiles gave garbage with one MMA in
flight and were exact with none, and with none the kernel ran at 0.6–0.7× bf16 (the dequantization
serialized with the MMAs; ``bench/results/w4a16-gluon-sweep-rs.md``).

Scales are in bfloat16 like the activations (float16 is left to the Triton kernels), zero points
int32 or symmetric (8), one group per K step (groups a multiple of 64, or per channel). Compiles
for Hopper only; ``available()`` says whether this Triton has Gluon.
"""
from __future__ import annotations

import torch
import triton

from .gluon_w8a8_mm import available  # noqa: F401 - re-exported: the same Gluon import decides
from .triton_mma_pairs import BF16_MAGIC, packed_dequant_ptx

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                   warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from .gluon_w8a8_mm import _grouped, _tma_load
    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any failure means "no Gluon here"
    _IMPORT_ERROR = e

BLOCK_K = 64     # inputs per K step: eight int32 words of codes per row
WORDS = BLOCK_K // 8


# the pairs kernel's per-word PTX: $4 a word, $5 -(128 + zero) and $6 the scale as bf16 pairs
_PTX_WORD = packed_dequant_ptx(("$5",) * 4, ("$6",) * 4, **BF16_MAGIC)
if _IMPORT_ERROR is None:
    _PTX_WORD = gl.constexpr(_PTX_WORD)


def _word_layout(block_n: int, warps: int):
    """Threads take whole rows' runs of words (16-byte loads where a thread has 4 or 8)."""
    per_thread = min(WORDS, block_n * WORDS // (32 * warps))
    return gl.BlockedLayout(size_per_thread=[1, per_thread], threads_per_warp=[32 * per_thread // WORDS,
                            WORDS // per_thread], warps_per_cta=[warps, 1], order=[1, 0])


if _IMPORT_ERROR is None:
    @gluon.jit
    def _row_params(s_ptr, z_ptr, rows, N, g, stride_sn, stride_zn, HAS_ZERO: gl.constexpr):
        """The rows' ``-(128 + zero)`` and scale for group ``g``, each as a pair of bf16 halves."""
        rc = gl.where(rows < N, rows, 0)
        sb = gl.load(s_ptr + rc * stride_sn + g).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        if HAS_ZERO:
            z = gl.load(z_ptr + rc * stride_zn + g)
        else:
            z = gl.full(rows.shape, 8, gl.int32, rows.type.layout)
        return (((0x4300 + z) | 0x8000) & 0xFFFF) * 0x10001, sb * 0x10001

    @gluon.jit
    def _dequant(words, nzz, ss):
        """``(BN, 8)`` words → the ``(BN, 64)`` bf16 weights in input order."""
        p0, p1, p2, p3 = gl.inline_asm_elementwise(
            _PTX_WORD, "=r,=r,=r,=r,r,r,r", [words, gl.expand_dims(nzz, 1), gl.expand_dims(ss, 1)],
            dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
        pairs = gl.join(gl.join(p0, p2), gl.join(p1, p3))  # [..., b, a] = pair 2b + a
        lo = pairs.to(gl.int16).to(gl.bfloat16, bitcast=True)
        hi = (pairs >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
        BN: gl.constexpr = words.shape[0]
        return gl.reshape(gl.join(lo, hi), [BN, 64])

    @gluon.jit
    def _step(k, k_tiles, w_desc, x_desc, w_bufs, x_bufs, a_bufs, ready, s_ptr, z_ptr, rows, N, group, stride_sn,
              stride_zn, nzz, ss, acc, off_m, off_n, use_acc, STAGES: gl.constexpr, HAS_ZERO: gl.constexpr,
              WL: gl.constexpr):
        """K step ``k``: dequantize its weights (``nzz``/``ss`` its rows' zeros and scales) into A
        buffer ``k % 2``, issue its MMAs, retire the step before's (the other A buffer is then free)
        and refill that step's stage. Returns the accumulator and the next step's zeros and scales."""
        BK: gl.constexpr = x_desc.block_type.shape[1]
        _STEP_BYTES: gl.constexpr = w_desc.block_type.shape[0] * BK // 2 + x_desc.block_type.shape[0] * BK * 2
        s = k % STAGES
        # the next step's scales and zeros a step ahead: their loads' latency hides behind this step
        g_next = (gl.minimum(k + 1, k_tiles - 1) * BK) // group
        nzz_next, ss_next = _row_params(s_ptr, z_ptr, rows, N, g_next, stride_sn, stride_zn, HAS_ZERO)
        mbarrier.wait(ready.index(s), (k // STAGES) & 1)
        a = a_bufs.index(k % 2)
        a.store(_dequant(w_bufs.index(s).load(WL), nzz, ss))
        fence_async_shared()
        acc = warpgroup_mma(a, x_bufs.index(s).permute((1, 0)), acc, use_acc=use_acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        nk = k + STAGES - 1
        ns = nk % STAGES
        pred = nk < k_tiles
        mbarrier.expect(ready.index(ns), _STEP_BYTES, pred=pred)
        _tma_load(w_desc, [off_n, nk * (BK // 8)], ready.index(ns), w_bufs.index(ns), pred=pred)
        _tma_load(x_desc, [off_m, nk * BK], ready.index(ns), x_bufs.index(ns), pred=pred)
        return acc, nzz_next, ss_next

    @gluon.jit
    def _w4a16_mm_gluon(w_desc, x_desc, s_ptr, z_ptr, bias_ptr, out_ptr, M, N, K, group,
                        stride_sn, stride_zn, stride_om, WL: gl.constexpr, HAS_ZERO: gl.constexpr,
                        HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                        num_warps: gl.constexpr):
        BN: gl.constexpr = w_desc.block_type.shape[0]   # weight rows
        BM: gl.constexpr = x_desc.block_type.shape[0]   # batch rows (the MMA's N)
        BK: gl.constexpr = x_desc.block_type.shape[1]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                             instr_shape=[16, BM, 16])
        ROWS: gl.constexpr = gl.SliceLayout(1, WL)

        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BN, BK // 8], w_desc.layout)
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BM, BK], x_desc.layout)
        a_bufs = gl.allocate_shared_memory(gl.bfloat16, [2, BN, BK],
                                           gl.NVMMASharedLayout.get_default_for([BN, BK], gl.bfloat16))
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)

        pid_m, pid_n = _grouped(gl.program_id(0), gl.cdiv(M, BM), gl.cdiv(N, BN), GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        k_tiles = gl.cdiv(K, BK)
        _STEP_BYTES: gl.constexpr = BN * BK // 2 + BM * BK * 2  # codes, then inputs
        for i in gl.static_range(STAGES - 1):
            pred = i < k_tiles
            mbarrier.expect(ready.index(i), _STEP_BYTES, pred=pred)
            _tma_load(w_desc, [off_n, i * (BK // 8)], ready.index(i), w_bufs.index(i), pred=pred)
            _tma_load(x_desc, [off_m, i * BK], ready.index(i), x_bufs.index(i), pred=pred)

        rows = off_n + gl.arange(0, BN, layout=ROWS)
        nzz, ss = _row_params(s_ptr, z_ptr, rows, N, 0, stride_sn, stride_zn, HAS_ZERO)
        # The first step outside the loop: had the accumulator a path to the last wait that skips
        # every MMA (an empty loop), ptxas would serialize all the kernel's wgmmas (its C7515).
        acc, nzz, ss = _step(0, k_tiles, w_desc, x_desc, w_bufs, x_bufs, a_bufs, ready, s_ptr, z_ptr, rows, N, group,
                             stride_sn, stride_zn, nzz, ss, gl.zeros((BN, BM), dtype=gl.float32, layout=acc_layout),
                             off_m, off_n, False, STAGES, HAS_ZERO, WL)
        for k in range(1, k_tiles):
            acc, nzz, ss = _step(k, k_tiles, w_desc, x_desc, w_bufs, x_bufs, a_bufs, ready, s_ptr, z_ptr, rows, N,
                                 group, stride_sn, stride_zn, nzz, ss, acc, off_m, off_n, True, STAGES, HAS_ZERO, WL)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        # out[m, n] = acc[n, m] (+ bias[n]), rounded once, then moved so that each thread stores 8
        # consecutive outputs of one batch row (16 bytes)
        if HAS_BIAS:
            bn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, acc_layout))
            acc = acc + gl.load(bias_ptr + bn, mask=bn < N, other=0.0).to(gl.float32)[:, None]
        store: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[16, 2],
                                               warps_per_cta=[1, num_warps], order=[0, 1])
        y = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), store)
        sn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, store))
        sm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, store))
        out = out_ptr + sm[None, :].to(gl.int64) * stride_om + sn[:, None]
        gl.store(out, y, mask=(sn[:, None] < N) & (sm[None, :] < M))


def gluon_w4_fits(layout, x: torch.Tensor) -> bool:
    """4-bit codes, bf16 inputs and scales, groups of whole K steps, TMA-able rows."""
    return (layout.bits == 4 and x.dtype == torch.bfloat16 and layout.scale.dtype == torch.bfloat16
            and layout.k % BLOCK_K == 0 and (layout.group_size <= 0 or layout.group_size % BLOCK_K == 0)
            and x.stride(-1) == 1 and (x.stride(0) * 2) % 16 == 0 and x.data_ptr() % 16 == 0
            and layout.packed.data_ptr() % 16 == 0)


def w4a16_mm_gluon(x: torch.Tensor, layout, bias, block_n: int = 256, block_m: int = 128, stages: int = 4,
                   group_m: int = 8, warps: int = 8) -> torch.Tensor:
    """``x (M, K)`` bf16 times the layer's 4-bit weight → ``(M, N)`` bf16: ``block_n`` weight rows
    per program on ``warps`` warps (one or two warpgroups, 64 rows per MMA), ``block_m`` batch rows
    (the MMA's N)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"this Triton has no Gluon: {_IMPORT_ERROR}")
    if block_n not in (128, 256) or warps not in (4, 8) or block_m not in (64, 128, 256):
        raise ValueError(f"tiles of {block_n} weight rows on {warps} warps by {block_m} batch rows: the kernel takes "
                         "128 or 256 weight rows on 4 or 8 warps and 64–256 batch rows")
    if not gluon_w4_fits(layout, x):
        raise ValueError("the Gluon W4A16 kernel takes 4-bit codes, bf16 inputs and scales, K and groups in "
                         f"whole {BLOCK_K}-input steps and 16-byte aligned rows")
    m, k = x.shape
    n = layout.n
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    w_desc = TensorDescriptor(layout.packed, [n, layout.kw], [layout.packed.stride(0), 1], [block_n, WORDS],
                              gl.NVMMASharedLayout.get_default_for([block_n, WORDS], gl.int32))
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [block_m, BLOCK_K],
                              gl.NVMMASharedLayout.get_default_for([block_m, BLOCK_K], gl.bfloat16))
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _w4a16_mm_gluon[grid](w_desc, x_desc, layout.scale, layout.zero_or_dummy, bias if bias is not None else out, out,
                          m, n, k, layout.group_for(BLOCK_K), layout.stride_s, layout.stride_z, out.stride(0),
                          WL=_word_layout(block_n, warps), HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None,
                          STAGES=stages, GROUP_M=group_m, num_warps=warps)
    return out
