"""What the weight-and-activation quantized linears share: 8-bit weights with one scale per
output row, an optional static input scale, and a forward through the kernel dispatch.

Buffers: ``weight_codes (out, in)`` (int8, or float8_e4m3fn), ``weight_scale (out, 1)`` and,
for static activations, ``input_scale (1,)`` float32: compressed-tensors' tensors, but for the
codes' name (``weight`` there), which lowbit's native layout reserves for its sentinel; the
``int-quantized`` / ``float-quantized`` exporters are a renaming. A module with ``input_scale``
quantizes its input per tensor with that fixed scale (static); one without computes a scale per
token at run time (dynamic). A static module built before calibration holds NaN there, so an
uncalibrated model cannot pass for a working one.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels


class ActQuantLinear(nn.Module):
    kernel_kind = ""
    act_kind = ""  # the ActivationSpec kind this module runs
    weight_dtype = torch.int8
    scale_dtype: torch.dtype | None = None  # None: the model's dtype

    def __init__(self, in_features: int, out_features: int, bias: bool = False, static: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_codes", torch.zeros(out_features, in_features, dtype=self.weight_dtype,
                                                         device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=self.scale_dtype or dtype,
                                                        device=device))
        # A None buffer is left out of the state dict; set_input_scale fills it in later.
        nan = torch.full((1,), float("nan"), device=device)
        self.register_buffer("input_scale", nan if static else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @property
    def static(self) -> bool:
        return self.input_scale is not None

    def set_input_scale(self, scale: torch.Tensor) -> None:
        """Fix the input scale (static activation quantization) from calibration."""
        self.input_scale = scale.detach().reshape(1).to(torch.float32, copy=True).to(self.weight_codes.device)

    @classmethod
    def empty(cls, in_features: int, out_features: int, activations, bias: bool = False,
              dtype: torch.dtype = torch.float32, device=None) -> "ActQuantLinear":
        """A module of this shape for ``activations`` (an ActivationSpec), for loaders to fill."""
        return cls(in_features, out_features, bias, static=not activations.dynamic, dtype=dtype, device=device)

    def activation_spec(self):
        """What this module does to its input, as the ActivationSpec a checkpoint records."""
        from ..formats.activations import ActivationSpec
        return ActivationSpec(kind=self.act_kind, dynamic=not self.static)

    @classmethod
    def from_activation_spec(cls, qw, bias, activations) -> "ActQuantLinear":
        """The module for a recipe: dynamic, or static with a NaN scale until calibrated."""
        uncalibrated = None if activations.dynamic else torch.full((1,), float("nan"))
        return cls.from_quantized(qw, bias, input_scale=uncalibrated)

    def _copy_bias(self, bias: torch.Tensor | None) -> None:
        if bias is not None:
            self.bias.data.copy_(bias.detach().to(self.bias.dtype))

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.weight_scale.dtype
        work = torch.promote_types(torch.float32, dtype)
        return (self.weight_codes.to(work) * self.weight_scale.to(work)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.run(x, self)

    def act_label(self) -> str:
        return "static per-tensor" if self.static else "dynamic per-token"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.kernel_kind}, activations {self.act_label()}")
