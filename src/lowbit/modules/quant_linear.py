"""Weight-only quantized linear layer: packed integer codes plus block scales (and zeros).

Buffers mirror the compressed-tensors names (``weight_packed``, ``weight_scale``) so the
exporters are a renaming, not a conversion; ``weight_zero`` holds unsigned integer zeros
(asymmetric formats only). The forward goes through the kernel dispatch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..algorithms.quantized_weight import QuantizedWeight
from ..formats import FormatSpec, dequantize, pack, packed_width, unpack
from .. import kernels


class QuantLinear(nn.Module):
    kernel_kind = "weight_only"

    def __init__(
        self, in_features: int, out_features: int, spec: FormatSpec, bias: bool = False,
        dtype: torch.dtype = torch.float32, device=None,
    ):
        super().__init__()
        spec.check_fits(out_features, in_features)
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        rows, groups = (1, 1) if spec.group_size == 0 else (out_features, spec.n_groups(in_features))
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_width(in_features, spec.bits), dtype=torch.int32, device=device))
        self.register_buffer("weight_scale", torch.ones(rows, groups, dtype=dtype, device=device))
        if spec.sym:
            self.weight_zero = None
        else:
            self.register_buffer("weight_zero", torch.zeros(rows, groups, dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> "QuantLinear":
        out_f, in_f = qw.shape
        m = cls(in_f, out_f, qw.spec, bias is not None, dtype=qw.scale.dtype, device=qw.codes.device)
        m.weight_packed.copy_(pack(qw.codes, qw.spec.bits))
        m.weight_scale.copy_(qw.scale)
        if qw.zero is not None:
            m.weight_zero.copy_(qw.zero)
        if bias is not None:
            m.bias.data.copy_(bias.detach().to(m.bias.dtype))
        return m

    def codes(self) -> torch.Tensor:
        return unpack(self.weight_packed, self.spec.bits, self.in_features)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes(), self.weight_scale, self.weight_zero, self.spec)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.codes(), self.weight_scale, self.weight_zero, self.spec,
                          dtype or self.weight_scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.run(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.label()}"
