"""lowbit's CUDA products as PyTorch custom operators: ``lowbit::weight_only_linear``,
``lowbit::w8a8_int8_gemv``, ``lowbit::w8a8_mm`` and ``lowbit::input_hadamard``.

Under ``torch.compile`` a quantized model's linears must stay one opaque call each: tracing into
the Triton dispatch would meet its tuner (which times candidates under CUDA graphs) and its
caches. As a custom operator with a shape-only "fake" implementation, the compiler sees a call it
does not look into and fuses everything around it (norms, rotary embeddings, activations);
at run time the call goes to the same dispatch as eager mode. Eager calls skip the operator
(``torch.compiler.is_compiling()`` is false) and its dispatch overhead.

``lowbit::w8a8_int8_gemv`` does the same for the W8A8 int8 decode GEMV (kernels/triton_int8_gemv.py),
whose split-K arrival counters are process-wide state a traced graph must not capture;
``lowbit::w8a8_mm`` for the W8A8 input pass and GEMM above the GEMV (int8; FP8 at small batches) (kernels/triton_int8_mm.py,
whose TMA descriptors are host objects); ``lowbit::input_hadamard`` for the online rotation.

The operators take the layer's buffers and format fields, not the module, so they need nothing
but tensors and numbers. CUDA tensors go to the Triton kernels (falling back to the reference
when Triton is missing); any other device to the reference dequantize-then-matmul.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import FormatSpec, dequantize, unpack
from .triton_layout import WeightLayout, layout_supported


@torch.library.custom_op("lowbit::weight_only_linear", mutates_args=())
def weight_only_linear_op(
    x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
    weight_zero: torch.Tensor | None, bias: torch.Tensor | None, bits: int, sym: bool,
    group_size: int, in_features: int,
) -> torch.Tensor:
    """``x (..., in_features)`` times the integer-coded weight ``(out, in_features)``, plus bias."""
    layout = WeightLayout(weight_packed, weight_scale, weight_zero, bits, group_size,
                          weight_packed.shape[0], in_features)
    if x.is_cuda and layout_supported(layout, x):
        from .triton_register import _triton_impl

        if _triton_impl() is not None:
            from .triton_weight_only import linear_on_layout

            return linear_on_layout(x, layout, bias)
    w = _dense_weight(weight_packed, weight_scale, weight_zero, bits, sym, group_size,
                      in_features, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _dense_weight(weight_packed, weight_scale, weight_zero, bits, sym, group_size, in_features,
                  dtype):
    spec = FormatSpec(bits=bits, sym=sym, group_size=group_size)
    return dequantize(unpack(weight_packed, bits, in_features), weight_scale, weight_zero, spec,
                      dtype)


@weight_only_linear_op.register_fake
def _weight_only_linear_shape(x, weight_packed, weight_scale, weight_zero, bias, bits, sym,
                              group_size, in_features):
    return x.new_empty(*x.shape[:-1], weight_packed.shape[0])


def _save_for_backward(ctx, inputs, output):
    x, weight_packed, weight_scale, weight_zero, bias, bits, sym, group_size, in_features = inputs
    ctx.save_for_backward(weight_packed, weight_scale, weight_zero)
    ctx.format = (bits, sym, group_size, in_features)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad):
    """Gradients for the input and the bias (adapters and fine-tuning on a frozen quantized
    weight); the codes and scales get none."""
    weight_packed, weight_scale, weight_zero = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ _dense_weight(weight_packed, weight_scale, weight_zero, *ctx.format,
                                      grad.dtype)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[4]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, None, grad_bias, None, None, None, None


weight_only_linear_op.register_autograd(_backward, setup_context=_save_for_backward)


def call_op(x: torch.Tensor, module) -> torch.Tensor:
    """The module's product through the operator (for integer formats the kernels read)."""
    spec = module.spec
    return torch.ops.lowbit.weight_only_linear(
        x, module.weight_packed, module.weight_scale, module.weight_zero, module.bias, spec.bits,
        spec.sym, spec.group_size, module.in_features)


@torch.library.custom_op("lowbit::w8a8_int8_gemv", mutates_args=())
def w8a8_int8_gemv_op(x: torch.Tensor, codes: torch.Tensor, weight_scale: torch.Tensor,
                      input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x (M, K)`` (a few rows) through the one-launch int8 GEMV: per-token (or static) int8
    inputs times the int8 ``codes (N, K)``, scaled → ``(M, N)`` in x's dtype (CUDA only).

    It declares no mutated arguments: the split-K arrival counters it bumps are library state
    that every call leaves at zero."""
    from .triton_int8_gemv import int8_gemv

    return int8_gemv(x, codes, weight_scale, input_scale, bias)


@w8a8_int8_gemv_op.register_fake
def _w8a8_int8_gemv_shape(x, codes, weight_scale, input_scale, bias):
    return x.new_empty(x.shape[0], codes.shape[0])


@torch.library.custom_op("lowbit::input_hadamard", mutates_args=())
def input_hadamard_op(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``x · Q`` through the fused rotation kernel (kernels/triton_hadamard.py; CUDA only)."""
    from .triton_hadamard import rotate_rows

    return rotate_rows(x, signs)


@input_hadamard_op.register_fake
def _input_hadamard_shape(x, signs):
    return torch.empty_like(x)


@torch.library.custom_op("lowbit::w8a8_mm", mutates_args=())
def w8a8_mm_op(x: torch.Tensor, codes: torch.Tensor, weight_scale: torch.Tensor,
               input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x (M, K)`` through lowbit's W8A8 GEMM path (kernels/cuda_w8a8.py): the Triton input pass,
    then the Triton GEMM (int8, or E4M3 when ``codes`` are float8) with its epilogue → ``(M, N)``
    in x's dtype. One opaque call under torch.compile, which must not trace the GEMM's host-side
    TMA descriptors. Declares no mutated arguments: the split-K arrival counters it bumps are
    library state every call leaves at zero."""
    from .cuda_w8a8 import fused_linear

    return fused_linear(x, codes, weight_scale, input_scale, bias)


@w8a8_mm_op.register_fake
def _w8a8_mm_shape(x, codes, weight_scale, input_scale, bias):
    return x.new_empty(x.shape[0], codes.shape[0])
