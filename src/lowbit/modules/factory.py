"""Which module runs a rounded weight: the recipe's activation spec picks it.

No activation spec: the weight-only ``QuantLinear``. Otherwise the W8A8 module of the spec's
kind, a table row each; static modules start with a NaN input scale that calibration fills in.
"""
from __future__ import annotations

import torch
from torch import nn

from ..algorithms.quantized_weight import QuantizedWeight
from ..formats.activations import ActivationSpec
from .act_linear import ActQuantLinear
from .fp8_linear import FP8Linear
from .llm_int8_linear import LLMInt8Linear
from .quant_linear import QuantLinear
from .w8a8_linear import W8A8Linear

ACT_MODULES: dict[str, type[ActQuantLinear]] = {"int8": W8A8Linear, "llm-int8": LLMInt8Linear, "fp8": FP8Linear}


def quantized_linear(qw: QuantizedWeight, bias: torch.Tensor | None = None,
                     activations: ActivationSpec | None = None) -> nn.Module:
    if activations is None:
        return QuantLinear.from_quantized(qw, bias)
    return ACT_MODULES[activations.kind].from_activation_spec(qw, bias, activations)
