"""FP8 W8A8 linear: E4M3 weights (one scale per output row) times E4M3 activations (one scale
per token, or one static scale); ``torch._scaled_mm`` on GPUs that have FP8 tensor cores, an
emulation elsewhere that casts through ``torch.float8_e4m3fn`` exactly as the GPU path does
(kernels/reference_w8a8.py). compressed-tensors calls this ``float-quantized``.

Weights come from any rounder of the ``fp8`` format (formats/fp8.py), whose codes are E4M3
bytes: the module views them as ``float8_e4m3fn``, no conversion.
"""
from __future__ import annotations

import torch

from ..algorithms.quantized_weight import QuantizedWeight
from ..errors import InputError
from ..formats.fp8 import FP8_DTYPE, FP8_ROWS
from .act_linear import ActQuantLinear


class FP8Linear(ActQuantLinear):
    kernel_kind = "fp8"
    act_kind = "fp8"
    weight_dtype = FP8_DTYPE
    # float32 whatever the model's dtype: torch._scaled_mm takes float32 scales, and a cast per
    # call would be one more kernel on the decode path.
    scale_dtype = torch.float32
    spec = FP8_ROWS

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                       input_scale: torch.Tensor | None = None) -> "FP8Linear":
        if qw.spec != FP8_ROWS:
            raise InputError(f"FP8 W8A8 needs fp8 e4m3 per-channel weights, got {qw.spec.label()}")
        out_f, in_f = qw.shape
        m = cls(in_f, out_f, bias is not None, static=input_scale is not None, dtype=qw.scale.dtype,
                device=qw.codes.device)
        m.weight_codes.copy_(qw.codes.view(FP8_DTYPE))
        m.weight_scale.copy_(qw.scale.reshape(out_f, 1))
        if input_scale is not None:
            m.set_input_scale(input_scale)
        m._copy_bias(bias)
        return m

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.weight_codes.view(torch.uint8), self.weight_scale, None, self.spec)
