"""W8A8 int8 linear: int8 weights (one scale per output row) times int8 activations (one scale
per token, or one static scale), accumulated exactly in int32, scales applied after.

``y = (q_x · q_wᵀ) ⊙ (s_x s_wᵀ) + b`` with ``q_x (M, K)``, ``q_w (N, K)`` int8 and the int32
product exact: CUDA runs it with ``torch._int_mm``, the CPU reference with the same integer
product (kernels/reference_w8a8.py). Weights come from any int8 symmetric per-channel rounder
(RTN, GPTQ): lowbit's unsigned codes ``q`` with mid-point 128 are stored signed, ``q − 128``,
which is compressed-tensors' ``int-quantized`` weight.
"""
from __future__ import annotations

import torch

from ..algorithms.quantized_weight import QuantizedWeight
from ..errors import InputError
from ..formats import FormatSpec
from .act_linear import ActQuantLinear

WEIGHT_SPEC = FormatSpec(kind="int", bits=8, sym=True, group_size=-1)


def signed_int8_codes(qw: QuantizedWeight) -> torch.Tensor:
    """Unsigned symmetric 8-bit codes (mid-point 128) as int8 ``q − 128``."""
    spec = qw.spec
    if (spec.kind, spec.bits, spec.sym, spec.group_size) != ("int", 8, True, -1):
        raise InputError(f"W8A8 needs int8 symmetric per-channel weights, got {spec.label()}")
    return (qw.codes.to(torch.int16) - 128).to(torch.int8)


class W8A8Linear(ActQuantLinear):
    kernel_kind = "w8a8_int8"
    act_kind = "int8"
    spec = WEIGHT_SPEC

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                       input_scale: torch.Tensor | None = None) -> "W8A8Linear":
        out_f, in_f = qw.shape
        m = cls(in_f, out_f, bias is not None, static=input_scale is not None,
                dtype=qw.scale.dtype, device=qw.codes.device)
        m.weight_codes.copy_(signed_int8_codes(qw))
        m.weight_scale.copy_(qw.scale.reshape(out_f, 1))
        if input_scale is not None:
            m.set_input_scale(input_scale)
        m._copy_bias(bias)
        return m

    def quantized_weight(self) -> QuantizedWeight:
        codes = (self.weight_codes.to(torch.int16) + 128).to(torch.uint8)
        return QuantizedWeight(codes, self.weight_scale, None, self.spec)
