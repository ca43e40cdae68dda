"""LLM.int8() (Dettmers et al. 2022): vector-wise int8 with mixed-precision decomposition.

Weights: int8, one scale per output row (the W8A8 weights). At run time, the input feature
columns holding any value of magnitude ``>= threshold`` (6.0, the paper's default) are multiplied
in float against the dequantized weight columns; every other column goes through int8 with one
scale per token (vector-wise), and the two products are added. A threshold of 0 sends every
column to float (the float product of x and the dequantized weight); an infinite one none (plain
vector-wise int8, W8A8 dynamic). The layer counts what fraction of its input columns were
outliers, over every forward since the last ``reset_outlier_count()``.
"""
from __future__ import annotations

import math

import torch

from ..algorithms.quantized_weight import QuantizedWeight
from ..errors import InputError
from .w8a8_linear import W8A8Linear

DEFAULT_THRESHOLD = 6.0


class LLMInt8Linear(W8A8Linear):
    kernel_kind = "llm_int8"
    act_kind = "llm-int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 threshold: float = DEFAULT_THRESHOLD, dtype: torch.dtype = torch.float32, device=None):
        super().__init__(in_features, out_features, bias, static=False, dtype=dtype, device=device)
        if not threshold >= 0:
            raise InputError(f"LLM.int8 outlier threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.reset_outlier_count()

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                       threshold: float = DEFAULT_THRESHOLD) -> "LLMInt8Linear":
        plain = W8A8Linear.from_quantized(qw, bias)
        m = cls(plain.in_features, plain.out_features, bias is not None, threshold,
                dtype=plain.weight_scale.dtype, device=plain.weight_codes.device)
        m.load_state_dict(plain.state_dict())
        return m

    @classmethod
    def empty(cls, in_features, out_features, activations, bias=False, dtype=torch.float32, device=None):
        return cls(in_features, out_features, bias, activations.outlier_threshold, dtype=dtype, device=device)

    def activation_spec(self):
        from ..formats.activations import ActivationSpec
        return ActivationSpec(kind=self.act_kind, outlier_threshold=self.threshold)

    @classmethod
    def from_activation_spec(cls, qw, bias, activations) -> "LLMInt8Linear":
        return cls.from_quantized(qw, bias, threshold=activations.outlier_threshold)

    def reset_outlier_count(self) -> None:
        self.outlier_columns, self.columns_seen = 0, 0

    def count_outliers(self, outliers: torch.Tensor) -> None:
        """``outliers (K,)`` bool: the columns one forward sent to float."""
        self.outlier_columns += int(outliers.sum())
        self.columns_seen += outliers.numel()

    @property
    def outlier_fraction(self) -> float:
        return self.outlier_columns / self.columns_seen if self.columns_seen else math.nan

    def act_label(self) -> str:
        return f"vector-wise int8, outlier threshold {self.threshold:g}"


def outlier_fractions(model: torch.nn.Module) -> dict[str, float]:
    """Per LLM.int8 layer: the fraction of input columns multiplied in float so far."""
    return {n: m.outlier_fraction for n, m in model.named_modules() if isinstance(m, LLMInt8Linear)}
