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

# Coded (E8M0 / E4M3) block scales decode to float32: rounders work with the decoded values.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "e8m0": torch.float32, "e4m3": torch.float32}


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


def store_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest ``dtype`` value >= ``scale``: rounding *up* keeps the block's range on the grid.

    Rounding to nearest could shrink a float16/bfloat16 scale by up to 2^-11 / 2^-9 of itself;
    over 255 steps (8-bit) that pulls the grid's end in by up to half a step, and the block's
    extreme weights would then err by more than half a step.
    """
    stored = scale.to(dtype)
    low = stored.to(scale.dtype) < scale
    if bool(low.any()):
        stored = torch.where(low, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    return stored


def qparams_from_range(
    wmin: torch.Tensor, wmax: torch.Tensor, spec: FormatSpec, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (in ``dtype``) and integer zero for blocks whose values lie in [wmin, wmax].

    Symmetric: ``scale = 2·amax / qmax`` puts ±amax half a step outside the grid, so all
    2^bits levels are used and the worst error stays half a step (GPTQ's convention).
    Asymmetric: ``scale = (max - min) / qmax``, ``zero = round(-min / scale)``; the range is
    widened to include 0 so that 0.0 is a grid point.
    The formulas run in float64 on the (small) per-block tensors, so they are exact up to one
    final rounding; the scale is rounded *up* to its storage dtype (:func:`store_scale`)
    *before* the zero and the codes are computed, so stored codes match the stored scale.
    """
    wmin = torch.clamp(wmin.double(), max=0.0)
    wmax = torch.clamp(wmax.double(), min=0.0)
    # Smallest normal float16: an all-zero block still gets a scale every scale dtype can hold.
    tiny = torch.finfo(torch.float16).tiny
    if spec.sym:
        amax = torch.maximum(-wmin, wmax)
        return store_scale((2 * amax / spec.qmax).clamp_min(tiny), dtype), None
    scale = store_scale(((wmax - wmin) / spec.qmax).clamp_min(tiny), dtype)
    zero = torch.round(-wmin / scale.double()).clamp(0, spec.qmax).to(torch.int32)
    return scale, zero


def zero_or_mid(zero: torch.Tensor | None, spec: FormatSpec) -> torch.Tensor | int:
    return zero if zero is not None else 1 << (spec.bits - 1)


def quantize_blocks(
    blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec
) -> torch.Tensor:
    """``blocks (rows, n, block)`` with ``scale/zero (rows, n)`` → uint8 codes of the same shape.

    ``w / scale`` is divided in float64: the quotient of two float32 numbers is then rounded
    to the nearest integer exactly (a float32 quotient can land on a half-integer the exact
    one is not at, and round the wrong way). One pass per layer, so the cost is small.
    """
    z = zero_or_mid(zero, spec)
    z = z.unsqueeze(-1).double() if isinstance(z, torch.Tensor) else float(z)
    q = torch.round(blocks.double() / scale.double().unsqueeze(-1)).add_(z)
    return q.clamp_(0, spec.qmax).to(torch.uint8)


def dequantize_blocks(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    # (q - zero) is a small integer, so one product in float32 (float64 when asked for) is
    # the correctly rounded value of the exact weight.
    work = torch.promote_types(torch.float32, dtype)
    z = zero_or_mid(zero, spec)
    z = z.unsqueeze(-1).to(work) if isinstance(z, torch.Tensor) else float(z)
    return ((codes.to(work) - z) * scale.to(work).unsqueeze(-1)).to(dtype)


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
