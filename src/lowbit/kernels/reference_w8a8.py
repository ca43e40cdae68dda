"""Reference kernels of the weight-and-activation quantized linears: run on any device.

int8 (W8A8, LLM.int8): the int8 × int8 product is computed exactly (``int_matmul``), so these
give the very integers ``torch._int_mm`` gives on a GPU; scales are applied after, in float32.
FP8: inputs are cast through ``torch.float8_e4m3fn`` as the GPU path casts them; every product
of two E4M3 values is exact in float32 and the sum is a float32 accumulation, as on tensor cores
(whose summation order differs: results agree to float32 rounding, not bit for bit).
Shapes: ``x (..., K)``, weight ``(N, K)``, ``weight_scale (N, 1)``; output ``(..., N)`` in x's dtype.
"""
from __future__ import annotations

import torch

from .activations import fp8_per_token, int8_per_token


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a (M, K) int8 · b (N, K)ᵀ int8`` as int32 ``(M, N)``.

    CPU: ``torch._int_mm`` (an int32-accumulating GEMM). Elsewhere a float64 product, exact
    because every partial sum is an integer below 2^53 (|sum| <= K·2^14, K < 2^39).
    """
    if a.device.type == "cpu":
        return torch._int_mm(a.contiguous(), b.t())
    return torch.matmul(a.double(), b.double().t()).to(torch.int32)


def scale_output(acc: torch.Tensor, x_scale: torch.Tensor, module, dtype: torch.dtype) -> torch.Tensor:
    """``acc (M, N)`` times the token scales ``(M, 1)`` and the row scales ``(N, 1)ᵀ``, plus bias."""
    y = acc.float() * x_scale.float() * module.weight_scale.float().reshape(1, -1)
    if module.bias is not None:
        y = y + module.bias.float()
    return y.to(dtype)


def w8a8_int8_linear(x: torch.Tensor, module) -> torch.Tensor:
    x2 = x.reshape(-1, module.in_features)
    q, x_scale = int8_per_token(x2, module.input_scale)
    y = scale_output(int_matmul(q, module.weight_codes), x_scale, module, x.dtype)
    return y.reshape(*x.shape[:-1], module.out_features)


def llm_int8_linear(x: torch.Tensor, module) -> torch.Tensor:
    """Outlier columns (any ``|x| >= threshold``) in float, the rest vector-wise int8."""
    x2 = x.reshape(-1, module.in_features)
    outliers = (x2.abs() >= module.threshold).any(0)
    module.count_outliers(outliers)
    regular = x2.masked_fill(outliers, 0)
    q, x_scale = int8_per_token(regular)
    y = scale_output(int_matmul(q, module.weight_codes), x_scale, module, torch.float32)
    if bool(outliers.any()):
        cols = outliers.nonzero().squeeze(1)
        w_cols = module.weight_codes[:, cols].float() * module.weight_scale.float()
        y = y + x2[:, cols].float() @ w_cols.t()
    return y.to(x.dtype).reshape(*x.shape[:-1], module.out_features)


def fp8_linear(x: torch.Tensor, module) -> torch.Tensor:
    x2 = x.reshape(-1, module.in_features)
    q, x_scale = fp8_per_token(x2, module.input_scale)
    acc = q.float() @ module.weight_codes.float().t()
    return scale_output(acc, x_scale, module, x.dtype).reshape(*x.shape[:-1], module.out_features)
