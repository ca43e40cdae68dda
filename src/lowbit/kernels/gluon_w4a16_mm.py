"""4-bit weight-only GEMM in Gluon for Hopper, batches of 2 and more, on the checkpoint layout.

``out^T = W · x^T`` as the Triton tensor-core kernels compute it (the weight tile is the MMA's
first operand), but with the weight tile fed to ``wgmma`` straight from registers and the inputs'
tile from shared memory, so the dequantization never goes through shared memory:

- TMA brings each K step's inputs ``(BM, 64)`` and the codes' words ``(BN, 8)`` (the checkpoint's
  int32 words, 8 codes each, least significant first) into ``STAGES`` shared-memory stages;
- each thread reads, for the two rows it holds in the A fragment (``r`` and ``r + 8`` of its
  warp's 16), all eight words of the step, and keeps byte ``c`` of each (``c`` = lane % 4): byte
  ``c`` of word ``w`` holds inputs ``8w + 2c`` and ``8w + 2c + 1``, exactly the pair that lane owns
  in the fragment (``wgmma``'s A layout: lane ``4r + c`` holds inputs ``2c, 2c+1, 2c+8, 2c+9`` of
  every 16). The four lanes of a quad read the same words (shared-memory broadcast);
- per pair one shift, one ``prmt`` (the byte beside itself shifted by 4), one ``lop3`` (the pair
  ``(128 + q, 128 + q')`` in bfloat16, ``triton_mma_pairs`` explains the trick), one packed FMA
  subtracting ``128 + zero`` (exact) and one multiplying by the scale (one rounding: the
  reference's bits);
- the pairs tensor is laid out so that splitting it into halves and joining them gives exactly
  ``wgmma``'s register-operand layout (``_pair_layout``; the conversion is a no-op: the compiled
  kernel has no shared-memory stores, which ``tests/test_gluon_w4a16_mm.py`` checks);
- ``warpgroup_mma_wait(num_outstanding=1)``: one step's MMAs run while the next step's weights
  are dequantized. An MMA reads its register operand while in flight, and neither the compiler nor
  ptxas keeps those registers from being rewritten meanwhile: with the K loop as written (one
  operand carried round the loop) the next step's tile landed in the registers of the MMA still
  running, and 128×256 tiles computed garbage on the H100. So the loop is unrolled by two: each
  step's operand has its own registers, written again only after the wait that retired the MMA
  reading them (``tests/test_gluon_w4a16_mm.py`` scans the K loop's SASS for such writes).

Tiles: 64 (one warpgroup), 128 or 256 weight rows by 16–256 batch rows (the MMA's N). Options the
dispatch tunes (each measured in ``bench/results/w4a16-gluon-sweep-*.md``):

- ``split_k``: programs take runs of K steps and write float32 slices that ``reduce_partials``
  sums (layers whose tiles alone leave SMs idle: 14336×4096 at 256 rows 0.61 → 1.03× bf16);
- ``prefetch``: each step's code words are read from shared memory during the step before (the
  words' load latency was the second-largest stall in the ncu profile; 8–23% at 128-row batch tiles);
- ``sub = 2``: two 64-input sub-steps per pipeline step, so the barrier wait, the refill and the
  scale loads are paid once per 128 inputs (2–16% at batches of 16–64; fewer stages fit at large
  batches, where it loses).

Scales and zeros are loaded a step before their arithmetic, and the group of a step is a
compile-time count of steps per group (a division per step, and the arithmetic placed beside its
loads, waited on ~9% of the time in the profile, ``bench/results/w4a16-gluon-ncu.txt``).

Measured against dequantizing into shared memory and feeding both operands from there
(``bench/results/w4a16-gluon-sweep.md`` against ``-ss.md``): 1–7% faster at 256–4096 rows. In a
probe of that shared-memory version, the kernel without the dequantization (MMAs and data movement
only) ran at bf16 ``F.linear``'s speed: the dequantization, in the MMA warps and only partly hidden
behind the step in flight, costs the remaining 25–35% at large batches (``docs/KERNELS.md``).

Scales are in bfloat16 like the activations (float16 is left to the Triton kernels), zero points
int32 or symmetric (8), one group per K step (groups a multiple of 64, or of 128 with ``sub = 2``,
or per channel), output features a multiple of 128 (``gluon_w4_fits``). Compiles for Hopper only;
``available()`` says whether this Triton has Gluon.
"""
from __future__ import annotations

import torch
import triton

from .gluon_w8a8_mm import available  # noqa: F401 - re-exported: the same Gluon import decides
from .triton_layout import inline_ptx_ok, tma_rows
from .triton_mma_pairs import BF16_MAGIC
from .triton_splitk import SplitOutput

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from .gluon_w8a8_mm import _grouped, _tma_load
    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any failure means "no Gluon here"
    _IMPORT_ERROR = e

BLOCK_K = 64     # inputs per K step: eight int32 words of codes per row
WORDS = BLOCK_K // 8


def _pair_layout(warps: int, block_n: int):
    """The layout of the ``(BN, 8 words, 4 bytes)`` pairs tensor: lane ``4r + c`` of warp ``v``
    holds byte ``c`` of every word of rows ``r`` and ``r + 8`` of each 16-row block ``v + warps·i``.
    Merging the last two axes (pair ``j = 4w + c``), then splitting each pair into its two 16-bit
    halves (the new fastest axis), gives ``wgmma``'s A-operand layout for ``(BN, 64)`` 16-bit
    inputs, k_width 2: registers [half, row + 8, k + 8, k + 16, k + 32, row + 16·warps, ...], lanes
    [k + 2, k + 4, row + 1, + 2, + 4], warps [row + 16, + 32, ...]."""
    rows_per_pass = 16 * warps
    return gl.DistributedLinearLayout(
        reg_bases=[[8, 0, 0], [0, 1, 0], [0, 2, 0], [0, 4, 0]]
        + [[rows_per_pass << i, 0, 0] for i in range((block_n // rows_per_pass).bit_length() - 1)],
        lane_bases=[[0, 0, 1], [0, 0, 2], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16 << i, 0, 0] for i in range(warps.bit_length() - 1)],
        block_bases=[], shape=[block_n, WORDS, 4])


# One pair of ``triton_mma_pairs.packed_dequant_ptx``'s steps, its byte picked by a selector operand:
# $1 a word, $2 prmt's selector for byte c, $3 -(128 + zero) and $4 the scale, each as a bf16 pair.
_PTX_PAIR = f"""{{
.reg .b32 t, p, one, nz;
mov.b32 one, {BF16_MAGIC['one']};
mov.b32 nz, 0x80008000;
shr.u32 t, $1, 4;
prmt.b32 p, $1, t, $2;
lop3.b32 p, p, 0x000f000f, {BF16_MAGIC['magic']}, 0xea;
fma.rn.{BF16_MAGIC['t']} p, p, one, $3;
fma.rn.{BF16_MAGIC['t']} $0, p, $4, nz;
}}"""


if _IMPORT_ERROR is None:
    _PTX_PAIR = gl.constexpr(_PTX_PAIR)

    @gluon.jit
    def _row_loads(s_ptr, z_ptr, rows, N, g, stride_sn, stride_zn, HAS_ZERO: gl.constexpr):
        """The rows' scale (bf16) and zero (int32; 8 when symmetric) for group ``g``, as loaded:
        ``_row_pairs`` turns them into operands a step later, so nothing waits on the loads."""
        rc = gl.where(rows < N, rows, 0)
        s = gl.load(s_ptr + rc * stride_sn + g)
        if HAS_ZERO:
            z = gl.load(z_ptr + rc * stride_zn + g)
        else:
            z = gl.full(rows.shape, 8, gl.int32, rows.type.layout)
        return s, z

    @gluon.jit
    def _row_pairs(s, z):
        """``-(128 + zero)`` and the scale, each as a pair of bf16 halves in one int32."""
        sb = s.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return (((0x4300 + z) | 0x8000) & 0xFFFF) * 0x10001, sb * 0x10001

    @gluon.jit
    def _group(k, GROUP_STEPS: gl.constexpr):
        """The scale column of K step ``k`` (``GROUP_STEPS`` steps per group; 0: per channel)."""
        if GROUP_STEPS == 0:
            return k * 0
        else:
            return k // GROUP_STEPS

    @gluon.jit
    def _dequant(words, sel, nzz, ss, DOT: gl.constexpr):
        """``(BN, 8)`` words (replicated across each quad) → the ``(BN, 64)`` bf16 A operand, and the
        int32 pairs it is made of (the registers the MMA reads)."""
        pairs = gl.inline_asm_elementwise(
            _PTX_PAIR, "=r,r,r,r,r",
            [gl.expand_dims(words, 2), gl.expand_dims(gl.expand_dims(sel, 0), 0),
             gl.expand_dims(gl.expand_dims(nzz, 1), 2), gl.expand_dims(gl.expand_dims(ss, 1), 2)],
            dtype=gl.int32, is_pure=True, pack=1)
        BN: gl.constexpr = words.shape[0]
        flat = gl.reshape(pairs, [BN, 32])
        lo = flat.to(gl.int16).to(gl.bfloat16, bitcast=True)
        hi = (flat >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
        return gl.convert_layout(gl.reshape(gl.join(lo, hi), [BN, 64]), DOT), pairs

    @gluon.jit
    def _fill(j, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, off_m, off_n, STAGES: gl.constexpr,
              SUB: gl.constexpr, STEP_BYTES: gl.constexpr):
        """Issue the copies of step ``j`` (``SUB`` K sub-steps of 64 inputs from sub-step
        ``(k0 + j)·SUB``) into its stage, if the program has that step."""
        BK: gl.constexpr = x_desc.block_type.shape[1]
        s = j % STAGES
        pred = j < steps
        mbarrier.expect(ready.index(s), STEP_BYTES * SUB, pred=pred)
        for h in gl.static_range(SUB):
            kk = (k0 + j) * SUB + h
            _tma_load(w_desc, [off_n, kk * (BK // 8)], ready.index(s), w_bufs.index(s * SUB + h), pred=pred)
            _tma_load(x_desc, [off_m, kk * BK], ready.index(s), x_bufs.index(s * SUB + h), pred=pred)

    @gluon.jit
    def _step(j, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, s_ptr, z_ptr, rows, N, stride_sn, stride_zn,
              sel, s_row, z_row, words, acc, p_prev, off_m, off_n, use_acc, STAGES: gl.constexpr,
              HAS_ZERO: gl.constexpr, GROUP_STEPS: gl.constexpr, PREFETCH: gl.constexpr, DOT: gl.constexpr,
              WL: gl.constexpr, STEP_BYTES: gl.constexpr):
        """Step ``j`` of the program's ``steps`` (K step ``k0 + j``): dequantize its weights
        (``s_row``/``z_row`` its rows' scales and zeros as loaded; with ``PREFETCH`` its code
        ``words`` too, read during the step before), issue its MMAs, retire the step before's
        (``p_prev`` its A operand's pairs) and refill that step's stage. Returns the accumulator,
        this step's A operand, the next step's scales and zeros (loads in flight) and words."""
        s = j % STAGES
        nzz, ss = _row_pairs(s_row, z_row)
        # the next step's scales and zeros a step ahead: their loads' latency hides behind this step
        # (the profile showed the arithmetic on them, placed beside the loads, waiting ~9% of the time)
        s_next, z_next = _row_loads(s_ptr, z_ptr, rows, N, _group(k0 + gl.minimum(j + 1, steps - 1), GROUP_STEPS),
                                    stride_sn, stride_zn, HAS_ZERO)
        if PREFETCH:
            cur = words   # read a step ahead
        else:
            mbarrier.wait(ready.index(s), (j // STAGES) & 1)
            cur = w_bufs.index(s).load(WL)
        a, p = _dequant(cur, sel, nzz, ss, DOT)
        acc = warpgroup_mma(a, x_bufs.index(s).permute((1, 0)), acc, use_acc=use_acc, is_async=True)
        if PREFETCH:
            # the next step's words, read while this step's MMAs run (the last step reads its own again)
            jn = gl.minimum(j + 1, steps - 1)
            mbarrier.wait(ready.index(jn % STAGES), (jn // STAGES) & 1)
            words_next = w_bufs.index(jn % STAGES).load(WL)
        else:
            words_next = words
        # Retires the step before's MMAs. Its pairs are kept alive to here, but that alone did not
        # stop the compiler from writing this step's tile into the registers that MMA was reading
        # (the MMA reads a copy); the caller's unrolling by two does (module docstring).
        acc, p_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, p_prev))
        _fill(j + STAGES - 1, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, off_m, off_n, STAGES, 1, STEP_BYTES)
        return acc, p, s_next, z_next, words_next

    @gluon.jit
    def _step2(j, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, s_ptr, z_ptr, rows, N, stride_sn, stride_zn,
               sel, s_row, z_row, acc, pa_prev, pb_prev, off_m, off_n, use_acc, STAGES: gl.constexpr,
               HAS_ZERO: gl.constexpr, GROUP_STEPS: gl.constexpr, DOT: gl.constexpr, WL: gl.constexpr,
               STEP_BYTES: gl.constexpr):
        """``_step`` with two 64-input sub-steps per step (one group of scales, one wait and one
        refill for both): the per-step work that is not dequantization or MMA (barriers, copies
        issued, scale loads) paid once per 128 inputs. Each sub-step's A operand has its own
        registers; the wait retires the step before's two MMAs."""
        s = j % STAGES
        nzz, ss = _row_pairs(s_row, z_row)
        s_next, z_next = _row_loads(s_ptr, z_ptr, rows, N, _group(k0 + gl.minimum(j + 1, steps - 1), GROUP_STEPS),
                                    stride_sn, stride_zn, HAS_ZERO)
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        wa = w_bufs.index(2 * s).load(WL)
        wb = w_bufs.index(2 * s + 1).load(WL)
        a, pa = _dequant(wa, sel, nzz, ss, DOT)
        acc = warpgroup_mma(a, x_bufs.index(2 * s).permute((1, 0)), acc, use_acc=use_acc, is_async=True)
        b, pb = _dequant(wb, sel, nzz, ss, DOT)
        acc = warpgroup_mma(b, x_bufs.index(2 * s + 1).permute((1, 0)), acc, use_acc=True, is_async=True)
        acc, pa_prev, pb_prev = warpgroup_mma_wait(num_outstanding=2, deps=(acc, pa_prev, pb_prev))
        _fill(j + STAGES - 1, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, off_m, off_n, STAGES, 2, STEP_BYTES)
        return acc, pa, pb, s_next, z_next

    @gluon.jit
    def _w4a16_mm_gluon(w_desc, x_desc, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, M, N, K, stride_sn,
                        stride_zn, stride_om, PAIRS: gl.constexpr, HAS_ZERO: gl.constexpr, HAS_BIAS: gl.constexpr,
                        STAGES: gl.constexpr, GROUP_M: gl.constexpr, GROUP_STEPS: gl.constexpr,
                        SPLIT_K: gl.constexpr, PREFETCH: gl.constexpr, SUB: gl.constexpr,
                        num_warps: gl.constexpr):
        BN: gl.constexpr = w_desc.block_type.shape[0]   # weight rows (16 per warp, repeated)
        BM: gl.constexpr = x_desc.block_type.shape[0]   # batch rows (the MMA's N)
        BK: gl.constexpr = x_desc.block_type.shape[1]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                             instr_shape=[16, BM, 16])
        DOT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        WL: gl.constexpr = gl.SliceLayout(2, PAIRS)
        ROWS: gl.constexpr = gl.SliceLayout(1, WL)

        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES * SUB, BN, BK // 8], w_desc.layout)
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * SUB, BM, BK], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)

        pid_m, pid_n = _grouped(gl.program_id(0), gl.cdiv(M, BM), gl.cdiv(N, BN), GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        # split pid_k's steps (of SUB·64 inputs) [k0, k0 + steps): the host keeps every split non-empty
        pid_k = gl.program_id(1)
        per_split = gl.cdiv(gl.cdiv(K, BK * SUB), SPLIT_K)
        k0 = pid_k * per_split
        steps = gl.minimum(per_split, gl.cdiv(K, BK * SUB) - k0)
        STEP_BYTES: gl.constexpr = BN * BK // 2 + BM * BK * 2  # codes, then inputs, per 64-input sub-step
        for i in gl.static_range(STAGES - 1):
            _fill(i, steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, off_m, off_n, STAGES, SUB, STEP_BYTES)

        rows = off_n + gl.arange(0, BN, layout=ROWS)
        # prmt selector for byte c: result bytes (c, c, 4 + c, 4 + c)
        sel = 0x4400 + 0x1111 * gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, PAIRS)))
        s_row, z_row = _row_loads(s_ptr, z_ptr, rows, N, _group(k0, GROUP_STEPS), stride_sn, stride_zn, HAS_ZERO)
        # the steps' fixed arguments; then the carried ones: scales, zeros, (words,) accumulator and
        # the pairs of the MMAs in flight
        fixed = (steps, k0, w_desc, x_desc, w_bufs, x_bufs, ready, s_ptr, z_ptr, rows, N, stride_sn, stride_zn, sel)
        if SUB == 1:
            if PREFETCH:
                mbarrier.wait(ready.index(0), 0)
                words = w_bufs.index(0).load(WL)
            else:
                words = s_row  # unused
            # The first step outside the loop: had the accumulator a path to the last wait that skips
            # every MMA (an empty loop), ptxas would serialize all the kernel's wgmmas (its C7515).
            acc, p, s_row, z_row, words = _step(0, *fixed, s_row, z_row, words,
                                                gl.zeros((BN, BM), dtype=gl.float32, layout=acc_layout),
                                                gl.zeros((BN, BK // 8, 4), dtype=gl.int32, layout=PAIRS), off_m, off_n,
                                                False, STAGES, HAS_ZERO, GROUP_STEPS, PREFETCH, DOT, WL, STEP_BYTES)
            # Unrolled by two: each step's A operand has its own registers, first written again only
            # after the wait that retired the MMA reading them (a loop-carried operand would be
            # rewritten while its MMA is in flight)
            for j in range(1, steps - 1, 2):
                acc, p1, s_row, z_row, words = _step(j, *fixed, s_row, z_row, words, acc, p, off_m, off_n, True, STAGES,
                                                     HAS_ZERO, GROUP_STEPS, PREFETCH, DOT, WL, STEP_BYTES)
                acc, p, s_row, z_row, words = _step(j + 1, *fixed, s_row, z_row, words, acc, p1, off_m, off_n, True,
                                                    STAGES, HAS_ZERO, GROUP_STEPS, PREFETCH, DOT, WL, STEP_BYTES)
            if steps % 2 == 0:
                acc, p, s_row, z_row, words = _step(steps - 1, *fixed, s_row, z_row, words, acc, p, off_m, off_n, True,
                                                    STAGES, HAS_ZERO, GROUP_STEPS, PREFETCH, DOT, WL, STEP_BYTES)
            acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p))
        else:
            zero_pairs = gl.zeros((BN, BK // 8, 4), dtype=gl.int32, layout=PAIRS)
            acc, pa, pb, s_row, z_row = _step2(0, *fixed, s_row, z_row,
                                               gl.zeros((BN, BM), dtype=gl.float32, layout=acc_layout), zero_pairs,
                                               zero_pairs, off_m, off_n, False, STAGES, HAS_ZERO, GROUP_STEPS, DOT,
                                               WL, STEP_BYTES)
            for j in range(1, steps - 1, 2):
                acc, pa1, pb1, s_row, z_row = _step2(j, *fixed, s_row, z_row, acc, pa, pb, off_m, off_n, True,
                                                     STAGES, HAS_ZERO, GROUP_STEPS, DOT, WL, STEP_BYTES)
                acc, pa, pb, s_row, z_row = _step2(j + 1, *fixed, s_row, z_row, acc, pa1, pb1, off_m, off_n, True,
                                                   STAGES, HAS_ZERO, GROUP_STEPS, DOT, WL, STEP_BYTES)
            if steps % 2 == 0:
                acc, pa, pb, s_row, z_row = _step2(steps - 1, *fixed, s_row, z_row, acc, pa, pb, off_m, off_n, True,
                                                   STAGES, HAS_ZERO, GROUP_STEPS, DOT, WL, STEP_BYTES)
            acc, pa, pb = warpgroup_mma_wait(num_outstanding=0, deps=(acc, pa, pb))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

        if SPLIT_K > 1:
            # the split's float32 slice ws[pid_k, m, n] straight from the accumulator's layout (each
            # 8 lanes of a warp cover 8 consecutive n: whole 32-byte sectors); reduce_partials sums
            # the slices and adds the bias
            wn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, acc_layout))
            wm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, acc_layout))
            dst = ws_ptr + (pid_k * M + wm[None, :]).to(gl.int64) * N + wn[:, None]
            gl.store(dst, acc, mask=(wn[:, None] < N) & (wm[None, :] < M))
        else:
            # out[m, n] = acc[n, m] (+ bias[n]), rounded once, then moved so that each thread stores 8
            # consecutive outputs of one batch row (16 bytes)
            if HAS_BIAS:
                bn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, acc_layout))
                acc = acc + gl.load(bias_ptr + bn, mask=bn < N, other=0.0).to(gl.float32)[:, None]
            LANES_N: gl.constexpr = 32 if BN >= 256 else BN // 8
            store: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[LANES_N, 32 // LANES_N],
                                                   warps_per_cta=[1, num_warps], order=[0, 1])
            y = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), store)
            sn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, store))
            sm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, store))
            out = out_ptr + sm[None, :].to(gl.int64) * stride_om + sn[:, None]
            gl.store(out, y, mask=(sn[:, None] < N) & (sm[None, :] < M))


def runs_on(x) -> bool:
    """Whether the kernel can run on ``x``'s device: an NVIDIA Hopper GPU (``wgmma`` and TMA as
    used here are sm_90 instructions), not under Triton's interpreter (Gluon has none)."""
    return inline_ptx_ok(x) and torch.cuda.get_device_capability(x.device)[0] == 9


def gluon_w4_fits(layout, x: torch.Tensor) -> bool:
    """4-bit codes, bf16 inputs and scales, groups of whole K steps, TMA-able rows, and whole
    128-row weight tiles: a partial weight tile would rely on the copy engine's zero fill and
    masked stores, which the GPU runs so far never exercised (a batch tile past M did: 128 rows in
    256-row tiles)."""
    return (layout.bits == 4 and x.dtype == torch.bfloat16 and layout.scale.dtype == torch.bfloat16
            and layout.n % 128 == 0
            and layout.k % BLOCK_K == 0 and (layout.group_size <= 0 or layout.group_size % BLOCK_K == 0)
            and tma_rows(x) and tma_rows(layout.packed))


def split_ok(k: int, split_k: int, sub: int = 1) -> bool:
    """Whether ``split_k`` splits of ``k`` inputs' steps of ``sub``·64 (``cdiv(steps, split_k)``
    each) leave none empty."""
    steps = k // (BLOCK_K * sub)
    return 1 <= split_k <= steps and (split_k - 1) * -(-steps // split_k) < steps


def w4a16_mm_gluon(x: torch.Tensor, layout, bias, block_n: int = 128, block_m: int = 256, stages: int = 4,
                   group_m: int = 8, warps: int = 8, split_k: int = 1, prefetch: bool = False,
                   sub: int = 1) -> torch.Tensor:
    """``x (M, K)`` bf16 times the layer's 4-bit weight → ``(M, N)`` bf16: ``block_n`` weight rows
    per program over ``warps`` warps (16 rows each, repeated), ``block_m`` batch rows (the MMA's N,
    ≤ 256), K split ``split_k`` ways (float32 slices summed by a second launch: for layers whose
    tiles alone leave SMs idle), ``prefetch``: each step's code words read during the step before,
    ``sub``: 64-input sub-steps per pipeline step (2: K and groups in whole 128s; no prefetch)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"this Triton has no Gluon: {_IMPORT_ERROR}")
    if block_n not in (64, 128, 256) or block_n % (16 * warps) or block_m not in (16, 32, 64, 128, 256):
        raise ValueError(f"tiles of {block_n} weight rows on {warps} warps by {block_m} batch rows: the kernel takes "
                         "64, 128 or 256 weight rows, a multiple of 16 per warp, and 16–256 batch rows")
    if stages < (3 if prefetch else 2):
        # reading a step ahead waits on the next stage before this step refills the one before it
        raise ValueError(f"{stages} stages: the kernel needs 2, and 3 when it reads the code words a step ahead")
    if not gluon_w4_fits(layout, x):
        raise ValueError("the Gluon W4A16 kernel takes 4-bit codes, bf16 inputs and scales, K and groups in "
                         f"whole {BLOCK_K}-input steps and 16-byte aligned rows")
    m, k = x.shape
    step = BLOCK_K * sub
    if sub not in (1, 2) or (sub == 2 and prefetch) or k % step or (layout.group_size > 0 and layout.group_size % step):
        raise ValueError(f"{sub} sub-steps per step{' with prefetch' if prefetch else ''}: the kernel takes 1, or 2 "
                         "(no prefetch) where K and the groups are whole multiples of 128")
    if not split_ok(k, split_k, sub):
        raise ValueError(f"{k} inputs cannot be split {split_k} ways into non-empty runs of {step}-input steps")
    n = layout.n
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    res = SplitOutput(m, n, x.dtype, x.device, split_k, tiles, self_reduce=False)
    w_desc = TensorDescriptor(layout.packed, [n, layout.kw], [layout.packed.stride(0), 1], [block_n, WORDS],
                              gl.NVMMASharedLayout.get_default_for([block_n, WORDS], gl.int32))
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [block_m, BLOCK_K],
                              gl.NVMMASharedLayout.get_default_for([block_m, BLOCK_K], gl.bfloat16))
    _w4a16_mm_gluon[(tiles, split_k)](
        w_desc, x_desc, layout.scale, layout.zero_or_dummy, bias if bias is not None else res.out, res.out, res.ws,
        m, n, k, layout.stride_s, layout.stride_z, res.out.stride(0),
        PAIRS=_pair_layout(warps, block_n), HAS_ZERO=layout.has_zero, HAS_BIAS=bias is not None and split_k == 1,
        STAGES=stages, GROUP_M=group_m, GROUP_STEPS=max(layout.group_size, 0) // step,
        SPLIT_K=split_k, PREFETCH=prefetch, SUB=sub, num_warps=warps)
    return res.finish(bias, x.dtype)

