"""Registers the Triton weight-only kernel for CUDA tensors, imported lazily.

Importing Triton (and compiling) costs time that CPU users should not pay, and Triton may be
absent: the registered function imports the kernels on its first CUDA call and falls back to the
reference kernel when Triton cannot be imported or the layer's format has no Triton kernel. Under
``torch.compile`` the call goes through the ``lowbit::weight_only_linear`` custom operator.
"""
from __future__ import annotations

import torch

from .dispatch import register_kernel
from .reference import weight_only_linear
from .triton_layout import triton_supports

_IMPL = []  # [the Triton entry point or None], filled on first use


def _triton_impl():
    if not _IMPL:
        try:
            from .triton_weight_only import weight_only_linear_triton
        except ImportError:
            weight_only_linear_triton = None
        _IMPL.append(weight_only_linear_triton)
    return _IMPL[0]


@register_kernel("cuda", "weight_only")
def weight_only_linear_cuda(x: torch.Tensor, module) -> torch.Tensor:
    impl = _triton_impl()
    if impl is None or not triton_supports(module, x):
        return weight_only_linear(x, module)
    if torch.compiler.is_compiling():  # one opaque call for the compiler (kernels/custom_op.py)
        from .custom_op import call_op

        return call_op(x, module)
    return impl(x, module)
