"""Weight-only quantized linear layer: packed codes plus block scales (and zeros).

Buffers mirror the compressed-tensors names (``weight_packed``, ``weight_scale``) so the
exporters are a renaming, not a conversion; ``weight_zero`` holds unsigned integer zeros
(asymmetric formats only). The forward goes through the kernel dispatch.

Codes are integers on a uniform grid or indices into a table of levels (NF4, FP4): the spec's
kind decides how they dequantize (``formats.dequantize``), not this module. Double-quantized
formats store ``weight_scale`` as int8 codes (bitsandbytes' 8-bit dynamic map, index - 128) with
``weight_scale_scale`` (float32, one per 256 block scales) and ``weight_scale_offset`` (float32,
one); ``block_scale()`` decodes them.
MXFP4 stores ``weight_scale`` as uint8 E8M0 exponents, NVFP4 as ``float8_e4m3fn`` beside
``weight_global_scale`` (float32, one): compressed-tensors' names and dtypes
(``formats/microscaling.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..algorithms.quantized_weight import QuantizedWeight
from ..formats import FormatError, FormatSpec, dequantize, pack, packed_width, unpack
from ..formats import microscaling
from ..formats.double_quant import DoubleQuantized, decode_scales, n_dq_blocks
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
        if spec.double_quant:
            self.register_buffer("weight_scale", torch.zeros(rows, groups, dtype=torch.int8, device=device))
            self.register_buffer("weight_scale_scale", torch.ones(
                n_dq_blocks(rows * groups), dtype=torch.float32, device=device))
            self.register_buffer("weight_scale_offset", torch.zeros(1, dtype=torch.float32, device=device))
        elif spec.coded_scales:
            code_dtype = torch.uint8 if spec.scale_dtype == "e8m0" else microscaling.E4M3_DTYPE
            self.register_buffer("weight_scale", torch.zeros(rows, groups, dtype=code_dtype, device=device))
            if spec.has_global_scale:
                self.register_buffer("weight_global_scale", torch.ones(1, dtype=torch.float32, device=device))
        else:
            self.register_buffer("weight_scale", torch.ones(rows, groups, dtype=dtype, device=device))
        if spec.sym:
            self.weight_zero = None
        else:
            self.register_buffer("weight_zero", torch.zeros(rows, groups, dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> "QuantLinear":
        out_f, in_f = qw.shape
        # Decoded double-quantized and coded scales are float32 whatever the model's dtype: the
        # bias keeps its own.
        own_dtype = qw.spec.double_quant or qw.spec.coded_scales
        dtype = bias.dtype if own_dtype and bias is not None else qw.scale.dtype
        m = cls(in_f, out_f, qw.spec, bias is not None, dtype=dtype, device=qw.codes.device)
        m.weight_packed.copy_(pack(qw.codes, qw.spec.bits))
        if qw.spec.double_quant:
            if qw.scale_dq is None:
                raise FormatError(f"{qw.spec.label()}: the rounder returned no double-quantized scales")
            m.weight_scale.copy_(qw.scale_dq.codes)
            m.weight_scale_scale.copy_(qw.scale_dq.dq_scale)
            m.weight_scale_offset.copy_(qw.scale_dq.offset)
        elif qw.spec.coded_scales:
            if qw.spec.has_global_scale:
                if qw.global_scale is None:
                    raise FormatError(f"{qw.spec.label()}: the rounder returned no global scale")
                m.weight_global_scale.copy_(qw.global_scale.reshape(1))
            m.weight_scale.copy_(microscaling.encode(qw.scale, qw.spec, qw.global_scale))
        else:
            m.weight_scale.copy_(qw.scale)
        if qw.zero is not None:
            m.weight_zero.copy_(qw.zero)
        if bias is not None:
            m.bias.data.copy_(bias.detach().to(m.bias.dtype))
        return m

    def codes(self) -> torch.Tensor:
        return unpack(self.weight_packed, self.spec.bits, self.in_features)

    def block_scale(self) -> torch.Tensor:
        """The scale of every block, ``(rows, n_groups)``, decoded if double-quantized or coded."""
        if self.spec.double_quant:
            return decode_scales(self.weight_scale, self.weight_scale_scale, self.weight_scale_offset)
        if self.spec.coded_scales:
            return microscaling.decode(self.weight_scale, self.spec, self.global_scale())
        return self.weight_scale

    def global_scale(self) -> torch.Tensor | None:
        """NVFP4's per-tensor scale, float32 ``(1,)``; None for other formats."""
        return self.weight_global_scale if self.spec.has_global_scale else None

    def quantized_weight(self) -> QuantizedWeight:
        dq = None
        if self.spec.double_quant:
            dq = DoubleQuantized(self.weight_scale, self.weight_scale_scale, self.weight_scale_offset)
        return QuantizedWeight(self.codes(), self.block_scale(), self.weight_zero, self.spec, scale_dq=dq,
                               global_scale=self.global_scale())

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        scale = self.block_scale()
        return dequantize(self.codes(), scale, self.weight_zero, self.spec, dtype or scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.run(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.label()}"
