"""Tensor-core kernel for 4-bit weight-only layers on a fragment-ordered copy of the codes.

``out^T = W · x^T`` as ``triton_mma_pairs``, but the codes are read from a one-time repacked
copy (``repack_frag``) in which each thread's 32-bit word holds exactly the eight codes that
thread owns in the tensor cores' A-operand fragment (``wgmma`` / ``mma.m16n8k16`` with A in
registers: lane ``4r + c`` holds rows ``r`` and ``r + 8`` of a 16-row block, inputs ``2c, 2c+1``
and ``2c+8, 2c+9`` of a 16-input step). So the dequantized tile is already where the dot wants
it (no trip through shared memory), and each lane reads 16 contiguous bytes per 64 inputs (each
warp 512 contiguous bytes). The rows' zero points and scales are repacked too (``frag_meta``):
one 16-byte word per (16-row block, group, r) holding ``-(MAGIC + zero)`` and the scale of rows
``r`` and ``r + 8`` as 16-bit pairs, so a tile needs no scale or zero arithmetic and no 2-byte
loads (which Triton's pipeliner cannot stage).

Per word: one shift, four ``prmt`` and four ``lop3`` give four 16-bit pairs ``(MAGIC + q, MAGIC
+ q')`` (MAGIC = 128 for bfloat16, 1024 for float16; ``triton_mma_pairs`` explains the trick),
four packed FMAs subtract ``MAGIC + zero`` of the pair's row (exact) and four multiply by its
scale (one rounding: the reference's bits). A K tile may span several groups: each 64-input
block reads its own group's word.

Repacked codes (int32): ``[N'/16][K'/64][8 r][4 c][4 t]`` with N' and K' padded to whole tiles
(``N_PAD``, ``K_PAD``); word ``(nb, kb, r, c, t)`` holds, at bits ``4s`` for ``s = 4·kh + 2·h +
e``, the code of row ``16·nb + 8·h + r`` and input ``64·kb + 16·t + 8·kh + 2·c + e`` (zero codes
and zero scales in the padding).

The packed instructions are inline PTX; Triton's CPU interpreter runs an emulation with the same
arithmetic, so CI checks the repacking, indexing and split-K on the CPU.
"""
from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from .triton_layout import inline_ptx_ok
from .triton_mma import mma_program
from .triton_mma_pairs import BF16_MAGIC, F16_MAGIC, halves, packed_dequant_ptx
from .triton_splitk import SplitOutput, split_tiles, store_result

KB_INPUTS = 64   # inputs per repacked block: four 16-input MMA steps, one 16-byte load per lane
N_PAD = 128      # rows padded to the widest program
K_PAD = 256      # inputs padded to the widest K tile

# Pairs 0 and 2 hold row r ($5 its -(MAGIC + zero), $7 its scale), pairs 1 and 3 row r + 8.
_ROWS = (("$5", "$6", "$5", "$6"), ("$7", "$8", "$7", "$8"))
_PTX_BF16 = tl.constexpr(packed_dequant_ptx(*_ROWS, **BF16_MAGIC))
_PTX_F16 = tl.constexpr(packed_dequant_ptx(*_ROWS, **F16_MAGIC))
_MAGIC = {torch.bfloat16: 0x4300, torch.float16: 0x6400}


def _padded(n: int, k: int) -> tuple[int, int]:
    return -(-n // N_PAD) * N_PAD, -(-k // K_PAD) * K_PAD


def repack_frag(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """int32 ``(N, ceil(K/8))`` 4-bit codes (code ``k`` at bit ``4·(k % 8)`` of word ``k // 8``)
    → the fragment-ordered int32 copy described above, flat, on the same device."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    codes = ((packed[:, :, None] >> shifts) & 0xF).reshape(n, -1)[:, :k].to(torch.uint8)
    n_p, k_p = _padded(n, k)
    codes = torch.nn.functional.pad(codes, (0, k_p - k, 0, n_p - n))
    # (nb, h, r, kb, t, kh, c, e) → (nb, kb, r, c, t, kh, h, e): the last three are the slot
    blocks = codes.reshape(n_p // 16, 2, 8, k_p // 64, 4, 2, 4, 2).permute(0, 3, 2, 6, 4, 5, 1, 7)
    slots = blocks.reshape(-1, 8).to(torch.int32) << shifts
    return slots.sum(dim=1, dtype=torch.int32).contiguous()  # disjoint bits: the sum is an OR


def frag_meta(layout, dtype: torch.dtype) -> torch.Tensor:
    """int32 ``[N'/16][groups'][8 r][4]``: ``-(MAGIC + zero)`` of rows r and r + 8, then their
    scales' 16 bits, each as a pair of 16-bit halves (the packed instructions' operands)."""
    n, k = layout.n, layout.k
    n_p, k_p = _padded(n, k)
    group = layout.group_size if layout.group_size > 0 else k_p
    groups = k_p // group
    scale = layout.scale.to(dtype).expand(n, -1)[:, :groups]             # per-tensor: (1, 1)
    zero = (layout.zero.expand(n, -1)[:, :groups] if layout.zero is not None
            else torch.full_like(scale, 1 << (layout.bits - 1), dtype=torch.int32))
    nz = ((_MAGIC[dtype] + zero.to(torch.int32)) | 0x8000) & 0xFFFF
    bits = scale.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    both = torch.zeros(n_p, groups, 2, dtype=torch.int32, device=scale.device)
    both[:n, :scale.shape[1], 0] = nz
    both[:n, :scale.shape[1], 1] = bits
    pairs = both * 0x10001                                                 # (n', g, [nz, s])
    # rows 16·nb + 8·h + r → (nb, g, r, [nz_lo, nz_hi, s_lo, s_hi])
    pairs = pairs.reshape(n_p // 16, 2, 8, groups, 2).permute(0, 3, 2, 4, 1)
    return pairs.reshape(-1).contiguous()


@triton.jit
def _emulated(words, shift: tl.constexpr, nz, ss, DT: tl.constexpr):
    """The interpreter's ``(q - zero)·scale`` for the code at bit ``shift``, rounded once."""
    if DT == tl.bfloat16:
        magic: tl.constexpr = 0x4300
    else:
        magic: tl.constexpr = 0x6400
    z = ((nz & 0x7FFF) - magic).to(tl.float32)
    s = (ss & 0xFFFF).to(tl.int16).to(DT, bitcast=True).to(tl.float32)
    return ((((words >> shift) & 0xF).to(tl.float32) - z) * s).to(DT)


@triton.jit
def dequant_frag(words, nz_lo, nz_hi, ss_lo, ss_hi, DT: tl.constexpr, USE_PTX: tl.constexpr):
    """Words ``(NB, 8, 4, KBT, 4)`` → the ``(16·NB, 64·KBT)`` tile ``(q - zero)·scale`` in ``DT``.

    ``nz_*``: ``-(MAGIC + zero)``, ``ss_*``: the scale's bits, as pairs, of rows r (``lo``) and
    r + 8 (``hi``), broadcastable to the words."""
    if USE_PTX:
        if DT == tl.bfloat16:
            asm: tl.constexpr = _PTX_BF16
        else:
            asm: tl.constexpr = _PTX_F16
        p0, p1, p2, p3 = tl.inline_asm_elementwise(
            asm, "=r,=r,=r,=r,r,r,r,r,r",
            [words, tl.broadcast_to(nz_lo, words.shape), tl.broadcast_to(nz_hi, words.shape),
             tl.broadcast_to(ss_lo, words.shape), tl.broadcast_to(ss_hi, words.shape)],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        l0, h0 = halves(p0, DT)
        l1, h1 = halves(p1, DT)
        l2, h2 = halves(p2, DT)
        l3, h3 = halves(p3, DT)
    else:
        l0 = _emulated(words, 0, nz_lo, ss_lo, DT)
        h0 = _emulated(words, 4, nz_lo, ss_lo, DT)
        l1 = _emulated(words, 8, nz_hi, ss_hi, DT)
        h1 = _emulated(words, 12, nz_hi, ss_hi, DT)
        l2 = _emulated(words, 16, nz_lo, ss_lo, DT)
        h2 = _emulated(words, 20, nz_lo, ss_lo, DT)
        l3 = _emulated(words, 24, nz_hi, ss_hi, DT)
        h3 = _emulated(words, 28, nz_hi, ss_hi, DT)
    # Pair 2·kh + h holds (e = 0, e = 1) of row half h, input half kh. A join's new axis is the
    # fastest register, so joining over kh, then h, then e leaves the registers in the fragment's
    # order (e, then h, then kh): the dot's operand layout without moving data.
    lo = tl.join(tl.join(l0, l2), tl.join(l1, l3))      # (..., kh, h)
    hi = tl.join(tl.join(h0, h2), tl.join(h1, h3))
    w = tl.join(lo, hi)                                 # (nb, r, c, kb, t, kh, h, e)
    w = tl.permute(w, (0, 6, 1, 3, 4, 5, 2, 7))         # (nb, h, r, kb, t, kh, c, e)
    NB: tl.constexpr = words.shape[0]
    KBT: tl.constexpr = words.shape[3]
    return tl.reshape(w, (NB * 16, KBT * 64))


@triton.jit
def _weights_tile(w_ptrs, m_ptrs, kb, tile, KBT: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr):
    """Tile ``tile``'s words and its rows' ``[nz_lo, nz_hi, s_lo, s_hi]`` per 64-input block (the
    copies are padded to whole tiles: no masks)."""
    words = tl.load(w_ptrs + tile * (KBT * 128))
    g = (tile * KBT + kb) // BLOCKS_PER_GROUP                  # each 64-input block's group
    return words, tl.load(m_ptrs + g * 32)                     # (NB, 8, 1, KBT, 4)


@triton.jit
def _tile_dot(acc, words, meta, xt, DT: tl.constexpr, USE_PTX: tl.constexpr):
    NB: tl.constexpr = words.shape[0]
    KBT: tl.constexpr = words.shape[3]
    lo, hi = tl.split(tl.reshape(meta, (NB, 8, 1, KBT, 2, 2)))  # [nz, s] of rows r, r + 8
    nz_lo, ss_lo = tl.split(lo)
    nz_hi, ss_hi = tl.split(hi)
    w = dequant_frag(words, nz_lo[:, :, :, :, None], nz_hi[:, :, :, :, None],
                     ss_lo[:, :, :, :, None], ss_hi[:, :, :, :, None], DT, USE_PTX)
    return tl.dot(w, xt, acc)


@triton.jit
def _mma_frag_kernel(
    x_ptr, wf_ptr, meta_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KBLK, GROUPS, stride_xm, stride_xk, stride_om,
    BN: tl.constexpr, BM: tl.constexpr, KBT: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PTX: tl.constexpr,
    SELF_REDUCE: tl.constexpr,
):
    BK: tl.constexpr = KBT * 64
    NB: tl.constexpr = BN // 16
    DT: tl.constexpr = x_ptr.dtype.element_ty
    rn, rm, n_mask, m_mask, pid_k = mma_program(N, M, BN, BM)
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    nb = (tl.program_id(0) * NB + tl.arange(0, NB))[:, None, None, None, None]
    r = tl.arange(0, 8)[None, :, None, None, None]
    c = tl.arange(0, 4)[None, None, :, None, None]
    kb = tl.arange(0, KBT)[None, None, None, :, None]
    t = tl.arange(0, 4)[None, None, None, None, :]
    w_ptrs = wf_ptr + nb * (KBLK * 128) + kb * 128 + r * 16 + c * 4 + t
    m_ptrs = meta_ptr + (nb * GROUPS * 8 + r) * 4 + tl.arange(0, 4)[None, None, None, None, :]
    acc = tl.zeros((BN, BM), tl.float32)
    for tile in range(first, last):
        words, meta = _weights_tile(w_ptrs, m_ptrs, kb, tile, KBT, BLOCKS_PER_GROUP)
        rk = tile * BK + tl.arange(0, BK)
        # Loaded (BM, BK), along the inputs (vectorised loads), then transposed for the dot.
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
                    mask=m_mask[:, None] & (rk < K)[None, :], other=0.0)
        acc = _tile_dot(acc, words, meta, tl.trans(x), DT, USE_PTX)
    store_result(acc, out_ptr, ws_ptr, cnt_ptr, b_ptr, rm[None, :] * stride_om + rn[:, None],
                 rm[None, :] * N + rn[:, None], M * N, rn[:, None],
                 n_mask[:, None] & m_mask[None, :], pid_k, tl.program_id(0) +
                 tl.program_id(1) * tl.num_programs(0), SPLIT_K, SELF_REDUCE, HAS_BIAS)


def frag_fits(layout, x: torch.Tensor) -> bool:
    """4-bit codes, groups of whole 64-input blocks (or one scale per row or tensor), scales
    stored in the activations' dtype (the packed multiply uses them as they are)."""
    return (layout.bits == 4 and layout.scale.dtype == x.dtype and x.dtype in _MAGIC
            and (layout.group_size <= 0 or layout.group_size % KB_INPUTS == 0))


def mma_frag(x: torch.Tensor, layout, frag: torch.Tensor, meta: torch.Tensor, bias,
             cfg) -> torch.Tensor:
    """``x (M, K)`` (any strides) times the layer's weight, read from its repacked copies ``frag``
    (``repack_frag``) and ``meta`` (``frag_meta``) → ``(M, N)`` in ``x``'s dtype.
    ``cfg.block_k``: inputs per tile, 64, 128 or 256."""
    if not frag_fits(layout, x):
        raise ValueError("the fragment-ordered kernel takes 4-bit codes in groups of 64k inputs "
                         "with scales in the input dtype")
    if cfg.block_n % 64 or N_PAD % cfg.block_n or cfg.block_k not in (64, 128, 256):
        raise ValueError(f"frag tiles: block_n 64 or 128, block_k 64-256, got {cfg.label()}")
    if cfg.num_warps > 4 and cfg.block_m != 256:
        # Two warpgroups on 128-column batch tiles computed wrong, run-to-run varying results
        # on an H100 with Triton 3.6 (bench/frag_check.py); 256-column tiles were exact.
        raise ValueError(f"frag with {cfg.num_warps} warps needs 256-column batch tiles, got "
                         f"{cfg.label()}")
    m = x.shape[0]
    n_p, k_p = _padded(layout.n, layout.k)
    group = layout.group_size if layout.group_size > 0 else k_p
    split = cfg.split_k
    grid = (triton.cdiv(layout.n, cfg.block_n), triton.cdiv(m, cfg.block_m), split)
    res = SplitOutput(m, layout.n, x.dtype, x.device, split, grid[0] * grid[1])
    _mma_frag_kernel[grid](
        x, frag, meta, bias if bias is not None else x, res.out, res.ws, res.counters_or_dummy,
        m, layout.n, layout.k, k_p // KB_INPUTS, k_p // group, x.stride(0), x.stride(1),
        res.out.stride(0),
        BN=cfg.block_n, BM=cfg.block_m, KBT=cfg.block_k // KB_INPUTS,
        BLOCKS_PER_GROUP=group // KB_INPUTS if layout.group_size > 0 else 1 << 30,
        SPLIT_K=split, HAS_BIAS=bias is not None, USE_PTX=inline_ptx_ok(x),
        SELF_REDUCE=res.self_reduce, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return res.finish(bias, x.dtype)


# The fragment-ordered copies, per (device, address, shape of the packed codes, activation dtype):
# made on first use and kept while the codes' tensor lives (a finalizer drops them with it), so
# a layer pays the repacking once. An in-place change of the codes, scales or zeros (a state dict
# loaded into the module) bumps their version, and new scale or zero tensors have new addresses:
# either way the copies are rebuilt.
_COPIES: dict = {}


def _copies_key(layout, dtype: torch.dtype) -> tuple:
    p = layout.packed
    return (p.device.type, p.device.index, p.data_ptr(), tuple(p.shape), dtype)


def frag_copies(layout, dtype: torch.dtype, build: bool = True):
    """``(codes, meta)`` of the layer for activations of ``dtype``: cached, or made now (unless
    ``build`` is false: then None when there is no current copy)."""
    key = _copies_key(layout, dtype)
    # the codes in place, or the scales / zeros in place or swapped for other tensors
    version = (layout.packed._version, layout.scale.data_ptr(), layout.scale._version,
               None if layout.zero is None else (layout.zero.data_ptr(), layout.zero._version))
    have = _COPIES.get(key)
    if have is not None and have[0] == version:
        return have[1], have[2]
    if not build:
        return None
    codes = repack_frag(layout.packed, layout.n, layout.k)
    meta = frag_meta(layout, dtype)
    if have is None:
        weakref.finalize(layout.packed, _COPIES.pop, key, None)
    _COPIES[key] = (version, codes, meta)
    return codes, meta
