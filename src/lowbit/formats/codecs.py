"""quantize / dequantize for any format: the spec's kind picks the module that does the arithmetic.

Both take and return the same things for every kind (``w, codes (out, in)``; ``scale``, ``zero``
per block, ``zero`` None for symmetric and lookup-table formats), so rounders, modules and
exporters call these and never look at the kind themselves.
"""
from __future__ import annotations

import torch

from . import integer, levels
from .spec import FormatSpec

CODECS = {"int": integer, "nf": levels, "fp": levels, "fp8": levels}


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec):
    """``w (out, in)`` → uint8 codes ``(out, in)`` with the given block parameters."""
    return CODECS[spec.kind].quantize(w, scale, zero, spec)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 codes ``(out, in)`` → float weights ``(out, in)`` in ``dtype``."""
    return CODECS[spec.kind].dequantize(codes, scale, zero, spec, dtype)
