"""What an observer's range is for: the grid the values will be rounded onto.

An observer turns seen values into a clipping range; the grid turns a range into a scale (and
zero) and says how a value is rounded, which the error-driven observers (MSE, KL) need in order
to score a candidate range. Two grids:

- :class:`IntGrid`: lowbit's integer formats (``FormatSpec`` kind ``int``): ``scale = 2·amax/qmax``
  for symmetric grids (compressed-tensors' convention, all 2^bits levels used), min/max with an
  integer zero otherwise; the arithmetic is :mod:`lowbit.formats.integer`'s.
- :class:`FP8Grid`: float8 E4M3 (``torch.float8_e4m3fn``), symmetric, ``scale = amax / 448``;
  rounding is PyTorch's own cast (round to nearest even, saturated to ±448 first).

Shapes: ranges, scales and zeros are ``(channels,)``; values are ``(channels, n)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..formats import FormatSpec
from ..formats.fp8 import E4M3_MAX, FP8_DTYPE
from ..formats.integer import qparams_from_range


@dataclass(frozen=True)
class IntGrid:
    bits: int = 8
    sym: bool = True

    @property
    def spec(self) -> FormatSpec:
        return FormatSpec(kind="int", bits=self.bits, sym=self.sym, group_size=0)

    def scale_zero(self, lo: torch.Tensor, hi: torch.Tensor, dtype=torch.float32):
        return qparams_from_range(lo, hi, self.spec, dtype)

    def fake_quant(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        """Round ``x (C, n)`` onto the grid of ``scale/zero (C,)`` and back (float32 or wider)."""
        work = torch.promote_types(x.dtype, torch.float32)
        s = scale.to(work).unsqueeze(-1)
        z = float(1 << (self.bits - 1)) if zero is None else zero.to(work).unsqueeze(-1)
        qmax = (1 << self.bits) - 1
        return (torch.round(x.to(work) / s) + z).clamp_(0, qmax).sub_(z).mul_(s)


@dataclass(frozen=True)
class FP8Grid:
    sym: bool = True

    def scale_zero(self, lo: torch.Tensor, hi: torch.Tensor, dtype=torch.float32):
        amax = torch.maximum(-lo.double().clamp(max=0), hi.double().clamp(min=0))
        return (amax / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny).to(dtype), None

    def fake_quant(self, x: torch.Tensor, scale: torch.Tensor, zero=None) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        s = scale.to(work).unsqueeze(-1)
        q = (x.to(work) / s).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
        return q.to(work).mul_(s)


Grid = IntGrid | FP8Grid


def grid_for(target) -> Grid:
    """``target``: a grid, an integer ``FormatSpec``, or ``"int8"`` / ``"fp8"``."""
    if isinstance(target, (IntGrid, FP8Grid)):
        return target
    if isinstance(target, FormatSpec):
        if target.kind != "int":
            raise InputError(f"observers support int and fp8 grids, not {target.kind!r}")
        return IntGrid(target.bits, target.sym)
    if target == "int8":
        return IntGrid(8, True)
    if target in ("fp8", "fp8_e4m3"):
        return FP8Grid()
    raise InputError(f"unknown observer target {target!r} (a FormatSpec, 'int8' or 'fp8')")
