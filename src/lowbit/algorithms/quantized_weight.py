"""What every rounder returns: the integer codes of one weight matrix and their block parameters."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..formats import FormatSpec, dequantize
from ..formats.double_quant import DoubleQuantized


@dataclass
class QuantizedWeight:
    """``codes: (out, in)`` uint8 in [0, 2^bits); ``scale/zero: (out, n_groups)`` or ``(1, 1)``.

    ``zero`` is None for symmetric formats (implicit mid-point). ``stats`` carries what the
    rounder measured (reconstruction error, chosen clip ratios, seconds) for the report.
    Double-quantized formats also carry ``scale_dq``, the stored form of ``scale`` (which then
    holds its decoded values, the ones the codes were computed against). Formats with a
    per-tensor scale (NVFP4) carry it as ``global_scale``, float32 ``(1,)``; their ``scale`` is
    decoded too (block scale over global scale).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: FormatSpec
    stats: dict = field(default_factory=dict)
    scale_dq: DoubleQuantized | None = None
    global_scale: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.spec, dtype)
