"""Uniform integer quantization: scale/zero from ranges, quantize, dequantize.

Codes are unsigned, ``q in [0, 2^bits - 1]``, and ``w ≈ (q - zero) * scale``. Symmetric formats
use the fixed zero ``2^(bits-1)`` (not stored); asymmetric formats store an integer zero per
block, chosen so that 0.0 is exactly representable (padding and pruned weights stay exact).

Shapes: ``w: (out, in)``; ``scale, zero: (out, n_groups)`` for group/channel granularity and
``(1, 1)`` for per-tensor.
"""
from __future__ import annotations

import torch

from .spec import FormatSpec

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_blocks(w: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """View ``w (out, in)`` as ``(rows, n_blocks, block)`` where each block shares one scale."""
    out_f, in_f = w.shape
    if spec.group_size > 0:
        spec.check_fits(out_f, in_f)
        return w.reshape(out_f, in_f // spec.group_size, spec.group_size)
    if spec.group_size == -1:
        return w.reshape(out_f, 1, in_f)
    return w.reshape(1, 1, out_f * in_f)


def from_blocks(b: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return b.reshape(shape)


def scale_dtype(spec: FormatSpec, weight_dtype: torch.dtype) -> torch.dtype:
    return _DTYPES[spec.scale_dtype] if spec.scale_dtype else weight_dtype


def qparams_from_range(
    wmin: torch.Tensor, wmax: torch.Tensor, spec: FormatSpec, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (in ``dtype``) and integer zero for blocks whose values lie in [wmin, wmax].

    Symmetric: ``scale = 2·amax / qmax`` puts ±amax half a step outside the grid, so all
    2^bits levels are used and the worst error stays half a step (GPTQ's convention).
    The scale is rounded to its storage dtype *before* codes are computed, so stored codes are
    consistent with the stored scale.
    """
    wmin = torch.minimum(wmin.float(), torch.zeros_like(wmin, dtype=torch.float32))
    wmax = torch.maximum(wmax.float(), torch.zeros_like(wmax, dtype=torch.float32))
    tiny = torch.finfo(torch.float16).tiny
    if spec.sym:
        amax = torch.maximum(wmin.abs(), wmax)
        scale = (2 * amax / spec.qmax).clamp_min(tiny).to(dtype)
        return scale, None
    scale = ((wmax - wmin) / spec.qmax).clamp_min(tiny).to(dtype)
    zero = torch.round(-wmin / scale.float()).clamp(0, spec.qmax).to(torch.int32)
    return scale, zero


def zero_or_mid(zero: torch.Tensor | None, spec: FormatSpec) -> torch.Tensor | int:
    return zero if zero is not None else 1 << (spec.bits - 1)


def quantize_blocks(
    blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec
) -> torch.Tensor:
    """``blocks (rows, n, block)`` with ``scale/zero (rows, n)`` → uint8 codes of the same shape."""
    z = zero_or_mid(zero, spec)
    z = z.unsqueeze(-1).float() if isinstance(z, torch.Tensor) else float(z)
    q = torch.round(blocks.float() / scale.float().unsqueeze(-1)) + z
    return q.clamp_(0, spec.qmax).to(torch.uint8)


def dequantize_blocks(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    z = zero_or_mid(zero, spec)
    z = z.unsqueeze(-1).float() if isinstance(z, torch.Tensor) else float(z)
    return ((codes.float() - z) * scale.float().unsqueeze(-1)).to(dtype)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec):
    """``w (out, in)`` → uint8 codes ``(out, in)`` with the given block parameters."""
    return quantize_blocks(to_blocks(w, spec), scale, zero, spec).reshape(w.shape)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 codes ``(out, in)`` → float weights ``(out, in)`` in ``dtype``."""
    w = dequantize_blocks(to_blocks(codes, spec), scale, zero, spec, dtype)
    return w.reshape(codes.shape)


def block_range(w: torch.Tensor, spec: FormatSpec) -> tuple[torch.Tensor, torch.Tensor]:
    b = to_blocks(w, spec).float()
    return b.amin(-1), b.amax(-1)
