"""W8A8 int8 for decode (a few tokens): quantize the inputs, multiply, scale, in one launch.

At batch 1-4 the int8 layer is bound by reading its int8 weights, yet the ``torch._int_mm`` path
spends three launches on it (the input pass, the GEMM with the batch padded to 17 rows, the
scaling epilogue), which at decode cost as much as the weight read saves (a Llama-3-8B decode
step measured 1.01x bf16). Here each program computes its tokens' scales from their absmax
(``kernels/activations.py``'s arithmetic with IEEE divisions, as ``triton_act_quant`` does, so
the codes are the same), quantizes each K tile of the inputs four codes to a word, and multiplies with ``dp4a``
(four int8 products summed into an int32 per instruction; the interpreter computes the same
integers with shifts). The int32 sums are exact and the epilogue rounds as the reference's float32 ops do (no fused
multiply-adds), so the result equals the reference kernel's;
split-K slices are int32 too and the last program to arrive adds them in split order before
scaling (one launch, the counters of ``triton_splitk``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_act_quant import int8_codes, scaled_rows
from .triton_layout import inline_ptx_ok
from .triton_splitk import split_counters, split_tiles

MAX_ROWS = 4  # tokens one program can multiply
# Up to this batch the dispatch takes the GEMV (H100, bench/results/int8-gemv-sweep.json: 1.5-1.9x
# bf16 and 1.2-1.8x the _int_mm path at batch 1, 1.3-1.8x and 1.1-1.5x at 2; at 4 the int32
# accumulators of four rows make it slower than _int_mm on the large layers).
DISPATCH_MAX_ROWS = 2
TINY = tl.constexpr(torch.finfo(torch.float32).tiny)  # kernels/activations.py's scale floor


@triton.jit
def _dp4a(w, x, acc, USE_PTX: tl.constexpr):
    """``acc + Σ_j int8(w, j)·int8(x, j)`` over the four bytes of each int32 word."""
    if USE_PTX:
        out = tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [w, x, acc],
                                        dtype=tl.int32, is_pure=True, pack=1)
    else:  # sign-extend each byte by shifting it to the top, then arithmetically back down
        out = acc
        for j in tl.static_range(4):
            out += ((w << (24 - 8 * j)) >> 24) * ((x << (24 - 8 * j)) >> 24)
    return out


@triton.jit
def _token_scales(x_ptr, static_ptr, rm, m_mask, K, stride_xm, BM: tl.constexpr,
                  XBLOCK: tl.constexpr, STATIC: tl.constexpr):
    """``(BM,)`` float32 scales: the static one, or each token's ``absmax / 127.5``."""
    if STATIC:
        scale = tl.zeros((BM,), tl.float32) + tl.load(static_ptr).to(tl.float32)
    else:
        amax = tl.zeros((BM, XBLOCK), tl.float32)
        offs = tl.arange(0, XBLOCK)
        for k0 in range(0, K, XBLOCK):
            x = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + offs)[None, :],
                        mask=m_mask[:, None] & (k0 + offs < K)[None, :], other=0.0)
            amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
        scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=1), 127.5), TINY)  # IEEE, as PyTorch
    return scale


@triton.jit
def _int8_gemv_kernel(
    x_ptr, w_ptr, sw_ptr, static_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
    XBLOCK: tl.constexpr, STATIC: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PTX: tl.constexpr,
):
    BW: tl.constexpr = BK // 4
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = tl.arange(0, BM)
    n_mask = rn < N
    m_mask = rm < M
    scale = _token_scales(x_ptr, static_ptr, rm, m_mask, K, stride_xm, BM, XBLOCK, STATIC)
    inv = tl.math.div_rn(tl.full((BM,), 1.0, tl.float32), scale)  # one division per row (int8_codes)
    first, last = split_tiles(K, BK, SPLIT_K, pid_k)
    acc = tl.zeros((BM, BN, BW), tl.int32)
    rw0 = tl.arange(0, BW)
    byte = tl.arange(0, 4)
    for tile in range(first, last):
        rw = tile * BW + rw0
        words = tl.load(w_ptr + rn[:, None] * KW + rw[None, :],
                        mask=n_mask[:, None] & (rw < KW)[None, :], other=0)
        rk = rw[:, None] * 4 + byte[None, :]                                       # (BW, 4)
        x = tl.load(x_ptr + rm[:, None, None] * stride_xm + rk[None, :, :],
                    mask=m_mask[:, None, None] & (rk < K)[None, :, :], other=0.0)
        q = int8_codes(x.to(tl.float32), scale[:, None, None], inv[:, None, None]) & 0xFF
        xw = tl.sum(q << (8 * byte)[None, None, :], axis=2)                       # (BM, BW)
        acc = _dp4a(tl.broadcast_to(words[None, :, :], (BM, BN, BW)),
                    tl.broadcast_to(xw[:, None, :], (BM, BN, BW)), acc, USE_PTX)
    total = tl.sum(acc, axis=2)                                                   # (BM, BN)
    mask = m_mask[:, None] & n_mask[None, :]
    offs = rm[:, None] * N + rn[None, :]
    if SPLIT_K > 1:  # int32 slices (exact); the last split to arrive adds them in split order
        tl.store(ws_ptr + pid_k * M * N + offs, total, mask=mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros_like(total)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(ws_ptr + s * M * N + offs, mask=mask, other=0,
                                 cache_modifier=".cg")
            _store_scaled(total, scale, sw_ptr, b_ptr, out_ptr, rn, n_mask, offs, mask, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        _store_scaled(total, scale, sw_ptr, b_ptr, out_ptr, rn, n_mask, offs, mask, HAS_BIAS)


@triton.jit
def _store_scaled(total, scale, sw_ptr, b_ptr, out_ptr, rn, n_mask, offs, mask,
                  HAS_BIAS: tl.constexpr):
    """``total · s_x · s_w (+ bias)`` in the output dtype: ``reference_w8a8.scale_output``'s order."""
    y = scaled_rows(total.to(tl.float32), scale, sw_ptr, b_ptr, rn, n_mask, HAS_BIAS)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(rows per program, K tile, split-K, warps) for an ``N × K`` layer: the fastest configs of
    bench/int8_gemv_sweep.py on the H100 at batch 1 (within 10% of the best at batch 2) are
    64-row programs over whole rows when there are enough of them to fill the GPU, else 32-row
    programs with K split until there are about 256."""
    if -(-n // 64) >= 200:
        return 64, 512, 1, 4
    block_k = 1024 if k >= 4096 else 256
    split = max(1, min(8, -(-256 // -(-n // 32)), -(-k // block_k)))
    return 32, block_k, split, 4


def int8_gemv(x2: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor,
              static_scale: torch.Tensor | None, bias: torch.Tensor | None,
              block_n: int | None = None, block_k: int = 256, split_k: int = 2,
              num_warps: int = 2):
    """``x2 (M, K)`` (M ≤ 4) against int8 ``codes (N, K)`` with row scales ``w_scale`` (``(N,)`` or
    ``(N, 1)``, any float dtype: widened to float32 in the kernel, exactly) → ``(M, N)``.

    Dynamic per-token input scales unless ``static_scale`` is given. Without ``block_n`` the
    config is ``gemv_config``'s."""
    m, k = x2.shape
    n = codes.shape[0]
    if block_n is None:
        block_n, block_k, split_k, num_warps = gemv_config(n, k)
    if m > MAX_ROWS or k % 4 or not codes.is_contiguous():
        raise ValueError(f"int8 GEMV: at most {MAX_ROWS} rows and contiguous codes with K % 4 == 0")
    x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
    w_scale = w_scale.reshape(-1)
    if w_scale.stride(0) != 1:
        w_scale = w_scale.contiguous()
    bm = max(1, triton.next_power_of_2(m))
    grid_n = triton.cdiv(n, block_n)
    # One split when no counters exist yet while a graph is captured (torch.compile reaches this
    # through the lowbit::w8a8_int8_gemv operator, so its graph never holds the counters).
    counters = split_counters(x2.device, grid_n) if split_k > 1 else None
    if counters is None:
        split_k = 1
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    ws = torch.empty(split_k, m, n, dtype=torch.int32, device=x2.device) if split_k > 1 else out
    static = static_scale is not None
    _int8_gemv_kernel[(grid_n, split_k)](
        x2, codes.view(torch.int32), w_scale, static_scale.float() if static else w_scale,
        bias if bias is not None else w_scale, out, ws, counters if counters is not None else ws,
        m, n, k, k // 4, x2.stride(0),
        BM=bm, BN=block_n, BK=block_k, SPLIT_K=split_k, XBLOCK=min(1024, triton.next_power_of_2(k)),
        STATIC=static, HAS_BIAS=bias is not None, USE_PTX=inline_ptx_ok(x2), num_warps=num_warps,
        enable_fp_fusion=False,  # products and the bias sum round separately, as the reference's
    )
    return out
