"""An online randomized Hadamard rotation of a linear layer's inputs (QuaRot's R4).

``y = x Wᵀ = (x Q)(W Q)ᵀ`` for any orthogonal ``Q``. With ``Q = diag(s) H / √n`` (``s`` random
signs, ``H`` a Hadamard matrix) the weight ``W Q`` is fixed offline
(``pipeline/online_hadamard_block.py``) and ``x Q`` is computed at run time, before the layer
quantizes its input: one channel's outlier is spread over all ``n`` channels of its token, which a
single static input scale per tensor can then hold. It has to run online because the input of
``down_proj`` is ``act(gate) · up``, not a linear image of anything a weight could absorb.

The rotation lives on the module, whatever its type (``nn.Linear`` while the walk calibrates, then
the quantized layer): a buffer ``input_hadamard_signs`` (int8 ±1, saved with the layer) and a
forward pre-hook. Pre-hooks run before any hook registered after them, so calibration hooks
(GPTQ's Hessians, the static observers) see the rotated input, which is what the layer quantizes.
``H = kron(A, Sylvester(p))`` is applied as its two factors (``n (m + p)`` multiply-adds per row
instead of ``n²``). On a GPU one Triton kernel does it all in registers
(``kernels/triton_hadamard.py``: one read of the input, one write, the factors as tensor-core
products) for bfloat16 and float16 inputs that need no gradient; widths it does not take, GPUs
without Triton and inputs that need a gradient run the same two factors as PyTorch matmuls
(bfloat16 for bfloat16 inputs on a GPU), everything else in float32 at least, cast back to the
input's dtype. ``Q`` itself (for the offline weights and for references) is
``algorithms.hadamard.randomized_hadamard``, the signs ``random_signs``.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..algorithms.hadamard import hadamard_factors, sylvester
from ..errors import InputError

SIGNS = "input_hadamard_signs"


def has_input_hadamard(module: nn.Module) -> bool:
    return getattr(module, SIGNS, None) is not None


def _rotate_input(module: nn.Module, args: tuple):
    return (rotate(args[0], module),) + tuple(args[1:])


@functools.lru_cache(maxsize=None)
def _factors(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``H = kron(A, B)``, built once per width, device and dtype. Not buffers: a
    loader that builds the model on the meta device would leave unsaved buffers uninitialised."""
    A, p = hadamard_factors(n)
    return A.to(device, dtype), sylvester(p).to(device, dtype)


@functools.lru_cache(maxsize=None)
def _fused_kernel():
    """``kernels.triton_hadamard`` where Triton imports, else None."""
    try:
        from ..kernels import triton_hadamard
    except ImportError:
        return None
    return triton_hadamard


def fused_kernel_applies(device_type: str, dtype: torch.dtype, needs_grad: bool) -> bool:
    """Whether the fused kernel may rotate such an input. It rounds its operands to bfloat16 /
    TF32: fine for a half-precision result, not for float32's, so float32 and float64 inputs keep
    the matmul path's precision. It has no backward: inputs that need a gradient (adapters trained
    through the layer) take the matmuls."""
    return device_type == "cuda" and dtype in (torch.bfloat16, torch.float16) and not needs_grad


def rotate(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x Q`` for the module's ``Q`` (the hook's work; exposed for tests and references)."""
    signs = getattr(module, SIGNS)
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    fused = _fused_kernel() if fused_kernel_applies(x.device.type, x.dtype, needs_grad) else None
    if fused is not None and fused.supported(signs.numel()):
        if torch.compiler.is_compiling():  # one opaque call for the compiler (kernels/custom_op.py)
            return torch.ops.lowbit.input_hadamard(x, signs)
        return fused.rotate_rows(x, signs)
    return rotate_matmuls(x, signs)


def rotate_matmuls(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``x Q`` as PyTorch ops: the sign pass, then the two factors as matmuls."""
    # bfloat16 on a GPU: the products in bfloat16 with float32 accumulation (tensor cores; the
    # ±1 entries are exact, the two factors' results rounded to bfloat16, ~2^-9 relative, far
    # below the int8 rounding that follows); elsewhere in float32 at least (CPU references).
    work = x.dtype if x.is_cuda and x.dtype == torch.bfloat16 else torch.promote_types(x.dtype, torch.float32)
    n = signs.numel()
    A, B = _factors(n, x.device, work)
    m, p = A.shape[0], B.shape[0]
    # 1/√n with the signs in float32, then one rounding per element (a bfloat16 1/√n would scale
    # every input by the same rounding error).
    wide = torch.promote_types(work, torch.float32)
    scaled = x.to(wide) * (signs.to(wide) / math.sqrt(n))
    X = scaled.to(work).reshape(*x.shape[:-1], m, p)
    # Row vector times kron(A, B): X (m, p) -> Aᵀ X B. (Applying A as one GEMM over a transposed
    # copy instead of a broadcast batched matmul measured slower on an H100, bench/hadamard_cost.py.)
    Y = torch.matmul(A.T, torch.matmul(X, B))
    return Y.reshape(x.shape).to(x.dtype)


def attach_input_hadamard(module: nn.Module, signs: torch.Tensor) -> nn.Module:
    """Give ``module`` the online rotation with ``signs`` (n,) (its input width). In place."""
    n = signs.numel()
    factors = hadamard_factors(n)
    if factors is None:
        raise InputError(f"no Hadamard matrix of order {n} is known here (online rotation)")
    if has_input_hadamard(module):
        raise InputError("this layer already rotates its inputs")
    device = next((t.device for t in module.buffers()), None) or next(
        (t.device for t in module.parameters()), torch.device("cpu"))
    module.register_buffer(SIGNS, signs.detach().to(torch.int8).to(device).clone())
    module.register_forward_pre_hook(_rotate_input)
    return module


def empty_input_hadamard(module: nn.Module, n: int) -> nn.Module:
    """A placeholder rotation (all signs +1) for a loader to fill from the checkpoint."""
    return attach_input_hadamard(module, torch.ones(n, dtype=torch.int8))


def carry_input_hadamard(old: nn.Module, new: nn.Module) -> nn.Module:
    """When ``new`` replaces ``old`` (a quantized layer replacing its float one), it keeps rotating
    its inputs as ``old`` did."""
    if has_input_hadamard(old):
        attach_input_hadamard(new, getattr(old, SIGNS))
    return new


def input_hadamard_layers(model: nn.Module) -> dict[str, int]:
    """name -> input width of every layer of ``model`` that rotates its inputs online."""
    return {name: getattr(m, SIGNS).numel() for name, m in model.named_modules() if has_input_hadamard(m)}
