"""Lookup-table formats: a code indexes a table of levels, scaled per block by the block's absmax.

``w ≈ levels[q] · scale`` with ``scale = absmax / max|levels|`` per block, so each block's largest
weight lands on the table's extreme level (NF4 in QLoRA, FP4 in the MX and NVFP4 formats). Codes
are unsigned table indices in [0, 2^bits), packed like integer codes (``formats/packing.py``).
Blocks are the integer formats' blocks (``to_blocks``: ``group_size`` along the input dimension).

FP4 blocks may code their scales as 8-bit floats instead (MXFP4's E8M0, NVFP4's E4M3 beside a
per-tensor global scale): :mod:`lowbit.formats.microscaling` rounds those, from the same absmax.

Tables are registered per kind (``nf.py``, ``fp4.py``) as float64 values indexed by code. Encoding
picks the nearest level of ``w / scale``, the quotient taken in float64; an exact tie between two
levels goes to the lower one (bitsandbytes' rule: ``bucketize`` on the midpoints). Where two codes
hold the same value (FP4's +0 and -0), the encoder uses the lower code.

Shapes as in ``formats/integer.py``: ``w, codes (out, in)``; ``scale (out, n_groups)`` or
``(1, 1)`` per tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch

from . import microscaling
from .integer import store_scale, to_blocks
from .spec import FormatSpec

LEVELS: dict[str, Callable[[], torch.Tensor]] = {}


def register_levels(kind: str):
    """Register ``fn() -> float64 (2^bits,)``, the levels of ``kind`` indexed by code."""
    def wrap(fn):
        LEVELS[kind] = fn
        return fn
    return wrap


@dataclass(frozen=True)
class LevelTable:
    values: torch.Tensor        # float64 (2^bits,): the level of each code
    sorted_values: torch.Tensor  # float64: the distinct levels, ascending
    midpoints: torch.Tensor      # float64: between consecutive distinct levels
    sorted_codes: torch.Tensor   # int64: the (lowest) code of each distinct level

    @property
    def amax(self) -> float:
        return float(self.values.abs().max())

    @classmethod
    def from_values(cls, values: torch.Tensor) -> "LevelTable":
        values = values.double()
        distinct = torch.unique(values)  # sorted ascending
        codes = torch.tensor([int(torch.nonzero(values == v)[0]) for v in distinct])
        return cls(values, distinct, (distinct[1:] + distinct[:-1]) / 2, codes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (uint8) of the levels nearest to ``x`` (already divided by the scale)."""
        i = torch.bucketize(x.double().contiguous(), self.midpoints.to(x.device))
        return self.sorted_codes.to(x.device)[i].to(torch.uint8)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.values.to(device=codes.device, dtype=dtype)[codes.long()]


@cache
def level_table(kind: str) -> LevelTable:
    if kind not in LEVELS:
        raise KeyError(f"no level table registered for kind {kind!r}")
    return LevelTable.from_values(LEVELS[kind]())


def table_for(spec: FormatSpec) -> LevelTable:
    return level_table(spec.kind)


def absmax_scale(blocks: torch.Tensor, spec: FormatSpec, dtype: torch.dtype,
                 ratio: torch.Tensor | float = 1.0, global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Scale per block of ``blocks (rows, n, block)``: ``ratio · absmax / max|level|``, rounded
    *up* to ``dtype`` so the block's largest weight stays inside the table's range. An all-zero
    block keeps scale 0 (as bitsandbytes stores it); its codes are those of level 0.

    Coded scales (``spec.coded_scales``) are the decoded float32 values of their E8M0 / E4M3
    codes instead, chosen by ``microscaling.block_scale`` from the same shrunk absmax (NVFP4 needs
    the tensor's ``global_scale``)."""
    amax = blocks.double().abs().amax(-1) * (ratio.double() if isinstance(ratio, torch.Tensor) else ratio)
    if spec.coded_scales:
        return microscaling.block_scale(amax, spec, table_for(spec).amax, global_scale)
    return store_scale(amax / table_for(spec).amax, dtype)


def tensor_global_scale(w: torch.Tensor, spec: FormatSpec) -> torch.Tensor | None:
    """The per-tensor scale of ``w (out, in)`` for formats that have one (NVFP4), else None."""
    return microscaling.global_scale(w, table_for(spec).amax) if spec.has_global_scale else None


def quantize_blocks(blocks: torch.Tensor, scale: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """``blocks (rows, n, block)`` with ``scale (rows, n)`` → uint8 codes of the same shape."""
    return nearest_codes(blocks, scale.unsqueeze(-1), spec)


def nearest_codes(w: torch.Tensor, scale: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """uint8 codes of the levels nearest to ``w / scale`` (``scale`` broadcast against ``w``)."""
    s = scale.double()
    # A zero scale only comes with an all-zero block: dividing by 1 instead gives level 0.
    return table_for(spec).encode(w.double() / torch.where(s > 0, s, 1.0))


def dequantize_blocks(codes: torch.Tensor, scale: torch.Tensor, spec: FormatSpec,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # A float32 level times a float32 scale, rounded once: the correctly rounded float32 of the
    # exact product of the stored numbers (float64 when asked for).
    work = torch.promote_types(torch.float32, dtype)
    levels = table_for(spec).decode(codes, work)
    return (levels * scale.to(work).unsqueeze(-1)).to(dtype)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: None, spec: FormatSpec) -> torch.Tensor:
    """``w (out, in)`` → uint8 codes ``(out, in)``; ``zero`` must be None (symmetric by construction)."""
    return quantize_blocks(to_blocks(w, spec), scale, spec).reshape(w.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: None, spec: FormatSpec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 codes ``(out, in)`` → float weights ``(out, in)`` in ``dtype``."""
    return dequantize_blocks(to_blocks(codes, spec), scale, spec, dtype).reshape(codes.shape)
