"""Activation quantization at run time, shared by the CPU references and the CUDA kernels.

Symmetric, per token (one scale per row of ``x (M, K)``, computed from the row's absmax: dynamic)
or per tensor (a scale fixed at calibration: static). int8 follows compressed-tensors'
symmetric convention, ``scale = 2·amax/255`` with codes in [-128, 127] (the row's absmax lands
half a step outside the grid, as lowbit's weights do); FP8 E4M3 uses ``amax/448`` (formats/fp8.py).
Everything is elementwise float32 arithmetic (a division, a rounding, a clamp), which every
device computes identically, so CPU and CUDA produce the same codes from the same input.
"""
from __future__ import annotations

import torch

from ..formats.fp8 import E4M3_MAX, to_fp8

INT8_HALF_RANGE = 127.5  # (qmax - qmin) / 2 for [-128, 127]
_TINY = torch.finfo(torch.float32).tiny  # scales are float32: only an all-zero block needs it


def token_absmax(x: torch.Tensor) -> torch.Tensor:
    """``(M, 1)`` float32 absmax of each row of ``x (M, K)``."""
    return x.abs().amax(1, keepdim=True).float()


def ieee_divide(a: torch.Tensor, divisor: float) -> torch.Tensor:
    """``a / divisor`` correctly rounded on every device. PyTorch's CUDA kernels multiply by the
    reciprocal when the divisor is a Python number (one rounding more, so some quotients differ
    from the CPU's); dividing by a tensor of it is an IEEE division everywhere, as lowbit's
    Triton kernels divide (``div_rn``)."""
    return a / torch.full_like(a, divisor)


def int8_scale(amax: torch.Tensor) -> torch.Tensor:
    return ieee_divide(amax.float(), INT8_HALF_RANGE).clamp_min(_TINY)


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x (M, K)`` with ``scale`` ``(M, 1)`` or ``(1,)`` → int8 codes ``(M, K)``."""
    return torch.round(x.float() / scale.float()).clamp_(-128, 127).to(torch.int8)


def int8_per_token(x: torch.Tensor, static_scale: torch.Tensor | None = None):
    """Codes and their scale ``(M, 1)``: the static scale broadcast, or each row's own."""
    scale = int8_scale(token_absmax(x)) if static_scale is None \
        else static_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    return quantize_int8(x, scale), scale


def fp8_per_token(x: torch.Tensor, static_scale: torch.Tensor | None = None):
    """E4M3 codes and their float32 scale ``(M, 1)``, dynamic per token or static."""
    if static_scale is None:
        scale = ieee_divide(token_absmax(x), E4M3_MAX).clamp_min(_TINY)
    else:
        scale = static_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    return to_fp8(x, scale), scale
