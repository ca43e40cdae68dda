"""CUDA kernels of the W8A8 int8 and FP8 linears: lowbit's Triton GEMV and GEMMs, and PyTorch's
built-in low-precision GEMMs where those are faster or Triton's TMA path is missing.

- int8: at batch 1-2 one Triton GEMV quantizes, multiplies (``dp4a``) and scales in a single
  launch (kernels/triton_int8_gemv.py); above that lowbit's Triton GEMM
  (kernels/triton_int8_mm.py) on Hopper, and from 128 tokens on older GPUs, where smaller
  batches take ``torch._int_mm`` (cuBLASLt, int32 accumulation), which needs ``M > 16`` (the
  batch is padded with zero rows). ``K``, ``N`` must be multiples of 8;
  other shapes take the reference kernel (an exact float64 product: slow, correct).
- FP8: on Hopper mostly lowbit's Triton GEMM on E4M3 codes (the int8 GEMM's TMA tiles with
  float32 sums, both scales and the bias applied in its epilogue; ``_fp8_on_triton`` says where);
  otherwise ``torch._scaled_mm`` with row-wise scales (one per token, one per output row), which
  needs compute capability 8.9+ (Ada, Hopper) and ``K``, ``N`` multiples of 16 (``M`` is padded
  to 16). Row-wise scaling writes bfloat16, the dtype models run in on GPUs; other input dtypes
  get the result cast back.
Activation quantization and the int8 epilogue run as one Triton kernel each where Triton
imports (kernels/triton_act_quant.py), else as the PyTorch ops of the CPU path
(kernels/activations.py); both compute the same codes, so every device feeds the GEMM the same
integers. Nothing here synchronises with the host (the shape checks read sizes only), so these
run under CUDA graphs.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .activations import fp8_per_token, int8_per_token
from .dispatch import register_kernel
from .reference_w8a8 import fp8_linear, scale_output, w8a8_int8_linear

INT_MM_MIN_M = 17
# From this many tokens the fused Triton GEMM (kernels/triton_int8_mm.py) replaces torch._int_mm
# and its separate epilogue. On GPUs with TMA (Hopper) that is every batch above the decode
# GEMV's (its 64-row tiles; LOWBIT_W8A8_TMA_MIN_ROWS overrides, for side-by-side benchmarks);
# elsewhere the pointer-load GEMM takes over from 128 rows, below which _int_mm with M padded to
# 17 runs at 1.2-1.6x bf16 (bench/results/w8a8-kernels.md).
FUSED_MIN_M = 128


def _rows_setting(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of rows, got {value!r}") from None


TMA_MIN_M = _rows_setting("LOWBIT_W8A8_TMA_MIN_ROWS", 3)
# Which GEMM FP8 layers run on Hopper (LOWBIT_FP8_GEMM=auto | triton | cublas; the last two for
# side-by-side benchmarks): with "auto", lowbit's TMA GEMM on E4M3 codes (float32 sums) where
# triton_int8_mm.fp8_prefers_tma says so, else torch._scaled_mm.
FP8_GEMMS = ("auto", "triton", "cublas")


def _fp8_gemm_setting() -> str:
    value = os.environ.get("LOWBIT_FP8_GEMM", "auto")
    if value not in FP8_GEMMS:
        raise ValueError(f"LOWBIT_FP8_GEMM must be one of {', '.join(FP8_GEMMS)}, got {value!r}")
    return value


FP8_GEMM = _fp8_gemm_setting()


def _fp8_on_triton(mods, m: int, module, device: torch.device) -> bool:
    if FP8_GEMM == "cublas" or mods is None or not mods[1].tma_device(device) \
            or not module.weight_codes.is_contiguous():
        return False
    if FP8_GEMM == "triton":
        return True
    return mods[1].fp8_prefers_tma(m, module.out_features, mods[1].sm_count(device))


_TRITON = []  # [(triton_act_quant, triton_int8_mm, triton_int8_gemv) or None], filled on first use


def _triton_modules():
    if not _TRITON:
        try:
            from . import triton_act_quant, triton_int8_gemv, triton_int8_mm
            _TRITON.append((triton_act_quant, triton_int8_mm, triton_int8_gemv))
        except ImportError:
            _TRITON.append(None)
    return _TRITON[0]


def _triton():
    mods = _triton_modules()
    return None if mods is None else mods[0]


def quantize_input(x2: torch.Tensor, static_scale: torch.Tensor | None, fp8: bool, rows: int | None = None):
    """Codes and scales of ``x2 (M, K)``, padded with zero rows up to ``rows`` for the GEMM."""
    t = _triton()
    if t is not None:
        return t.quantize_rows(x2, static_scale, fp8, rows)
    q, scale = (fp8_per_token if fp8 else int8_per_token)(x2, static_scale)
    return (q, scale) if rows is None else (_pad_rows(q, rows), _pad_rows(scale.contiguous(), rows))


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] >= rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


def int_mm_supports(module) -> bool:
    return module.in_features % 8 == 0 and module.out_features % 8 == 0


def fused_linear(x2: torch.Tensor, codes: torch.Tensor, weight_scale: torch.Tensor,
                 input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 (M, K)`` through the Triton input pass and lowbit's fused GEMM → ``(M, N)`` in x2's
    dtype: int8, or E4M3 when ``codes`` are float8 (TMA devices; codes whose rows the copy engine
    cannot address take ``torch._scaled_mm``). The GEMM reads ``weight_scale`` in its stored dtype
    and widens it in the epilogue."""
    fp8 = codes.dtype == torch.float8_e4m3fn
    mm = _triton_modules()[1]
    if fp8 and not (mm.tma_device(codes.device) and mm.tma_rows(codes)):
        return fp8_scaled_mm(x2, codes, weight_scale, input_scale, bias)
    q, x_scale = quantize_input(x2, input_scale, fp8=fp8)
    return (mm.fp8_mm_scaled if fp8 else mm.int8_mm_scaled)(q, codes, x_scale, weight_scale, bias, x2.dtype)


def _through_fused(x: torch.Tensor, x2: torch.Tensor, module) -> torch.Tensor:
    """The layer's product through ``fused_linear``, in x's leading shape; under torch.compile as
    one opaque operator (kernels/custom_op.py says why)."""
    args = (x2, module.weight_codes, module.weight_scale, module.input_scale, module.bias)
    y = torch.ops.lowbit.w8a8_mm(*args) if torch.compiler.is_compiling() else fused_linear(*args)
    return y.reshape(*x.shape[:-1], module.out_features)


@register_kernel("cuda", "w8a8_int8")
def w8a8_int8_cuda(x: torch.Tensor, module) -> torch.Tensor:
    if not int_mm_supports(module):
        return w8a8_int8_linear(x, module)
    x2 = x.reshape(-1, module.in_features)
    m = x2.shape[0]
    mods = _triton_modules()
    if mods is not None and m <= mods[2].DISPATCH_MAX_ROWS and module.weight_codes.is_contiguous():
        # decode: one launch, exact; the kernel widens the row scales itself
        args = (x2, module.weight_codes, module.weight_scale, module.input_scale, module.bias)
        # Under torch.compile one opaque operator (its split-K counters stay out of the graph).
        y = torch.ops.lowbit.w8a8_int8_gemv(*args) if torch.compiler.is_compiling() \
            else mods[2].int8_gemv(*args)
        return y.reshape(*x.shape[:-1], module.out_features)
    if mods is not None and m >= (TMA_MIN_M if mods[1].tma_device(x.device) else FUSED_MIN_M):
        return _through_fused(x, x2, module)
    q, x_scale = quantize_input(x2, module.input_scale, fp8=False, rows=max(m, INT_MM_MIN_M))
    acc = torch._int_mm(q, module.weight_codes.t())[:m]
    x_scale = x_scale[:m]
    t = _triton()
    y = t.scale_int32(acc, x_scale, module.weight_scale, module.bias, x.dtype) if t is not None \
        else scale_output(acc, x_scale, module, x.dtype)
    return y.reshape(*x.shape[:-1], module.out_features)


def scaled_mm_supports(module, device: torch.device) -> bool:
    return (torch.cuda.get_device_capability(device) >= (8, 9)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


@register_kernel("cuda", "fp8")
def fp8_cuda(x: torch.Tensor, module) -> torch.Tensor:
    if not scaled_mm_supports(module, x.device):
        return fp8_linear(x, module)
    x2 = x.reshape(-1, module.in_features)
    m = x2.shape[0]
    mods = _triton_modules()
    if _fp8_on_triton(mods, m, module, x.device):
        return _through_fused(x, x2, module)
    y = fp8_scaled_mm(x2, module.weight_codes, module.weight_scale, module.input_scale, module.bias)
    return y.reshape(*x.shape[:-1], module.out_features)


def fp8_scaled_mm(x2: torch.Tensor, codes: torch.Tensor, weight_scale: torch.Tensor,
                  input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 (M, K)`` through the FP8 input pass and ``torch._scaled_mm`` → ``(M, N)`` in x2's dtype."""
    m = x2.shape[0]
    q, x_scale = quantize_input(x2, input_scale, fp8=True, rows=-(-m // 16) * 16)
    y = torch._scaled_mm(q, codes.t(), scale_a=x_scale, scale_b=weight_scale.float().reshape(1, -1),
                         out_dtype=torch.bfloat16)[:m]
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x2.dtype)
