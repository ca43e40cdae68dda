"""The online randomized Hadamard rotation ``x → x Q`` (``modules/input_hadamard.py``) as one Triton
kernel: one read of ``x``, one write of the result, everything between in registers.

``Q = diag(s) H / √n`` with ``H = kron(A, H_p)`` (``A`` a Paley factor of order ``m``, or 1;
``H_p`` Sylvester's matrix of order ``p``). For one row viewed as ``X (m, p)`` the product is
``Aᵀ X H_p``. A program holds ``BR`` whole rows as a ``(BR, MP, p)`` tile (``MP`` = ``m`` rounded up
to a power of two, the rows past ``m`` zero, as are ``A``'s padding rows and columns) and applies
the factors as tensor-core products with small ±1 matrices:

- ``H_p`` as one product with ``H_p`` itself when ``p ≤ 128``, else as two with ``H_p1`` and
  ``H_p2`` (``p = p1 p2``, Sylvester's matrices are Kronecker powers of ``H_2``, so
  ``H_p = kron(H_p1, H_p2)`` exactly): ``X' (p1, p2) → H_p1 X' H_p2``;
- ``Aᵀ`` as one product from the left on the ``m`` axis.

Each factor multiplies from the side its axis is on (``H_p1`` as a batched product over the rows
of ``X``), so the tile is only reshaped, never permuted.

That is ``m + p`` (or ``m + p1 + p2``) multiply-adds per element on tensor cores, as the PyTorch
path's two matmuls do, but without its separate sign pass, conversions and copies between them
(each a full pass over the activations through memory). Every tensor dimension ``tl.dot`` sees is at least 16, so ``p ≥ 16`` and ``m`` (when not 1)
is padded to at least 16.

Precision: the signs and ``1/√n`` are applied in float32 on load, and every product accumulates
in float32. For bfloat16 inputs the operands are bfloat16 (the ±1 factors exact, the tile rounded
to bfloat16 before each of its two or three products, 2^-9 relative each, as the PyTorch path's
two bfloat16 matmuls do): 3.3e-3 relative error against float64 at 14336 wide, where TF32
operands measured 2.0e-3 and 1.6x the time (the tile's trips between the products' register
layouts, through shared memory, are what the kernel spends its time on, and bfloat16 halves
them). Other inputs take float32 operands as TF32 (10-bit mantissa), below float16's own
rounding; float32 and float64 layers keep the PyTorch path (``modules/input_hadamard.py``).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from ..algorithms.hadamard import hadamard_factors, sylvester

MIN_DOT = 16              # tl.dot's smallest dimension
MAX_SINGLE = 128          # H_p as one product up to this order (a 64 KiB float32 matrix)
MAX_TILE = 32768          # elements of one program's tile (128 float32 registers a thread at 8 warps)


@functools.lru_cache(maxsize=None)
def plan(n: int) -> tuple[int, int, int, int, int] | None:
    """``(m, MP, p1, p2, BR)`` for width ``n`` (``p = p1 p2``; ``p1 = 1`` for a single product;
    ``m = MP = 1`` without a Paley factor), or None when the kernel does not take this width."""
    factors = hadamard_factors(n)
    if factors is None:
        return None
    A, p = factors
    m = A.shape[0]
    mp = 1 if m == 1 else max(MIN_DOT, triton.next_power_of_2(m))
    if p < MIN_DOT:
        return None
    if p <= MAX_SINGLE:
        p1, p2 = 1, p
    else:
        p2 = MAX_SINGLE
        p1 = p // p2
        if p1 < MIN_DOT:  # 256 or 1024: split evenly enough that both factors reach 16
            p1 = MIN_DOT
            p2 = p // p1
        if p1 > MAX_SINGLE:
            return None
    tile = mp * p
    if tile > MAX_TILE:
        return None
    # several short rows per program, at least one long one (16384 elements: measured best for
    # 1536 and 14336 wide on the H100, bench/results/hadamard_kernel_sweep.json)
    br = max(1, min(16, 16384 // tile))
    return m, mp, p1, p2, br


@functools.lru_cache(maxsize=None)
def factor_matrices(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A_pad (MP, MP), H_p1, H_p2)`` float32 on ``device`` (a 1x1 dummy for a unit factor)."""
    m, mp, p1, p2, _ = plan(n)
    A, _ = hadamard_factors(n)
    A_pad = torch.zeros(mp, mp, dtype=torch.float32)
    A_pad[:m, :m] = A.float()
    return (A_pad.to(device), sylvester(p1).float().to(device), sylvester(p2).float().to(device))


@triton.jit
def _bf16_operand(v, INTERPRETED: tl.constexpr):
    """``v`` as a bfloat16 product operand. Triton's interpreter multiplies bfloat16 tensors as
    their raw 16-bit integers, so there the values are rounded to bfloat16 and kept float32 (the
    same operand values; the GPU's result is checked by bench/hadamard_cost.py's error column)."""
    if INTERPRETED:
        return v.to(tl.bfloat16).to(tl.float32)
    return v.to(tl.bfloat16)


@triton.jit
def _hadamard_kernel(x_ptr, s_ptr, a_ptr, h1_ptr, h2_ptr, y_ptr, R, stride_xr, stride_yr, inv_sqrt_n,
                     M: tl.constexpr, MP: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                     BR: tl.constexpr, DOT_BF16: tl.constexpr = False,
                     INTERPRETED: tl.constexpr = False):
    P: tl.constexpr = P1 * P2
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    i = tl.arange(0, MP)
    j = tl.arange(0, P)
    col = i[:, None] * P + j[None, :]                                           # (MP, P)
    mask = (r < R)[:, None, None] & (i < M)[None, :, None]
    v = tl.load(x_ptr + r[:, None, None] * stride_xr + col[None, :, :], mask=mask, other=0.0)
    s = tl.load(s_ptr + col, mask=(i < M)[:, None], other=0).to(tl.float32)
    v = v.to(tl.float32) * (s * inv_sqrt_n)[None, :, :]                          # (BR, MP, P)
    # Every factor multiplies from the side its axis is on, so the tile is only ever reshaped,
    # never permuted (a permute is a trip through shared memory).
    # X H_p2 on the last axis
    h2 = tl.load(h2_ptr + tl.arange(0, P2)[:, None] * P2 + tl.arange(0, P2)[None, :])
    if DOT_BF16:
        v = _bf16_operand(v, INTERPRETED)
        h2 = _bf16_operand(h2, INTERPRETED)
    v = tl.dot(tl.reshape(v, (BR * MP * P1, P2)), h2, input_precision="tf32")
    if P1 > 1:  # H_p1 X' on the middle axis of (BR·MP, P1, P2): a batched product from the left
        k1 = tl.arange(0, P1)
        h1 = tl.load(h1_ptr + k1[:, None] * P1 + k1[None, :])
        h1 = tl.broadcast_to(h1[None, :, :], (BR * MP, P1, P1))
        if DOT_BF16:
            v = _bf16_operand(v, INTERPRETED)
            h1 = _bf16_operand(h1, INTERPRETED)
        v = tl.dot(h1, tl.reshape(v, (BR * MP, P1, P2)), input_precision="tf32")
    if MP > 1:  # Aᵀ X on the m axis
        at = tl.load(a_ptr + i[None, :] * MP + i[:, None])                       # Aᵀ
        v = tl.reshape(v, (BR, MP, P))
        if DOT_BF16:
            v = _bf16_operand(v, INTERPRETED)
            at = _bf16_operand(at, INTERPRETED)
        if BR == 1:
            v = tl.reshape(tl.dot(at, tl.reshape(v, (MP, P)), input_precision="tf32"), (1, MP, P))
        else:
            v = tl.dot(tl.broadcast_to(at[None, :, :], (BR, MP, MP)), v, input_precision="tf32")
    v = tl.reshape(v, (BR, MP, P))
    tl.store(y_ptr + r[:, None, None] * stride_yr + col[None, :, :],
             v.to(y_ptr.dtype.element_ty), mask=mask)


def num_warps(tile: int) -> int:
    """Warps of a program holding ``tile`` elements: 4 (measured fastest) up to 128 float32
    registers a thread, 8 past that."""
    return 4 if tile <= 16384 else 8


def supported(n: int) -> bool:
    return plan(n) is not None


def rotate_rows(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``x (..., n) · Q`` for ``Q = diag(signs) kron(A, H_p) / √n``, in ``x``'s dtype. ``n`` must be a
    width :func:`supported` takes."""
    n = signs.numel()
    layout = plan(n)
    if layout is None or x.shape[-1] != n:
        raise ValueError(f"the Hadamard kernel does not take rows of width {x.shape[-1]} (signs {n})")
    m, mp, p1, p2, br = layout
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if rows:
        A, h1, h2 = factor_matrices(n, x.device)
        tile = br * mp * p1 * p2
        _hadamard_kernel[(triton.cdiv(rows, br),)](
            x2, signs, A, h1, h2, y, rows, x2.stride(0), y.stride(0), 1.0 / math.sqrt(n),
            M=m, MP=mp, P1=p1, P2=p2, BR=br, DOT_BF16=x.dtype == torch.bfloat16,
            INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=num_warps(tile))
    return y.reshape(x.shape)
