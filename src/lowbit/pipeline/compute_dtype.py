"""Run the calibration forwards in bfloat16 while rounding from the float32 weights.

On a CPU the walk is compute-bound: the block forwards (Hessian passes and next-input passes)
are three quarters of a GPTQ run. CPUs with native bfloat16 dot products (AVX512-BF16, AMX)
multiply bfloat16 matrices about four times faster than float32 ones (measured on the 2-core
EPYC: 880-960 against 214-222 GFLOP/s for SmolLM2's block shapes at 2048 rows). A GPU
calibration runs a bfloat16 model anyway; this gives a float32 model on such a CPU the same
arithmetic, and only the arithmetic:

- the block is cast to bfloat16 for its forwards, and so are the captured hidden states and the
  floating arguments the blocks receive (rotary tables, float masks; ``capture.py`` converts
  them batch by batch), so nothing promotes back;
- the Hessians are still accumulated in float32 (a bfloat16 input widens exactly);
- the rounder rounds the float32 weights as loaded, never their bfloat16 copies: before a
  group is rounded its linears get their float32 weights back (``restore``), so the scales and
  integers are computed from the same weights a float32 walk would use;
- what the block keeps unrounded (norms, biases of layers not targeted) gets its float32
  tensors back when the block is done.

The calibration statistics therefore carry bfloat16 activation noise (about 3 significant
digits), as they do on a GPU. Quality measured on SmolLM2 is in docs/GPTQ-DOMAIN.md.
"""
from __future__ import annotations

import torch
from torch import nn

from ..algorithms.registry import rounder_for
from ..errors import InputError

CHOICES = ("auto", "float32", "bfloat16", "model")


def cpu_has_native_bf16() -> bool:
    """True when this CPU's oneDNN runs bfloat16 matmuls on native instructions (AVX512-BF16 or
    AMX); without them bfloat16 is emulated and slower than float32."""
    cpu = getattr(torch.backends, "cpu", None)
    capability = cpu.get_cpu_capability() if cpu is not None else ""
    if capability not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(requested: str | torch.dtype | None, model_dtype: torch.dtype, device: torch.device,
            calibrated: bool, transforms: bool) -> torch.dtype:
    """The dtype the block forwards run in. ``auto`` picks bfloat16 only where it is a pure win:
    a float32 model calibrated on a CPU with native bfloat16, for a calibrated rounder without
    transforms (AWQ and SmoothQuant measure and fold on the block's own weights, so they keep the
    model dtype); everywhere else the model's dtype. ``model``: always the model's dtype."""
    if isinstance(requested, torch.dtype):
        requested = dtype_name(requested)
    requested = requested or "auto"
    if requested not in CHOICES:
        raise InputError(f"calibration dtype must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "model":
        return model_dtype
    if requested == "auto":
        wins = (model_dtype == torch.float32 and device.type == "cpu" and calibrated
                and not transforms and cpu_has_native_bf16())
        return torch.bfloat16 if wins else model_dtype
    if transforms and requested != dtype_name(model_dtype):
        raise InputError(f"calibration dtype {requested} needs a recipe without transforms "
                         f"(AWQ/SmoothQuant fold into the model's {dtype_name(model_dtype)} weights)")
    return getattr(torch, requested)


def resolve_for_recipe(requested, model_dtype: torch.dtype, device: torch.device, recipe) -> torch.dtype:
    """``resolve`` for a recipe: whether its rounder is calibrated and whether it has transforms."""
    calibrated = rounder_for(recipe.rounder.to_dict()["method"]).needs_calibration
    # whole-model transforms (rotate) are done before the walk: only block transforms fold into it
    return resolve(requested, model_dtype, device, calibrated, bool(recipe.block_transforms))


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the CLI's and the report's spelling)."""
    return str(dtype).removeprefix("torch.")


class BlockInDtype:
    """A block whose floating parameters and buffers are cast to ``dtype`` for its forwards,
    remembering the tensors they replaced (see the module docstring)."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        self.block = block
        self.dtype = dtype
        self.saved: dict[tuple[int, str], tuple[nn.Module, torch.Tensor, bool]] = {}
        for module in block.modules():
            for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if t is not None and t.is_floating_point() and t.dtype != dtype:
                    is_param = isinstance(t, nn.Parameter)
                    self.saved[(id(module), name)] = (module, t.data if is_param else t, is_param)
                    self._set(module, name, t.data.to(dtype), is_param)

    @staticmethod
    def _set(module: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
        if is_param:
            getattr(module, name).data = value
        else:
            setattr(module, name, value)

    def restore(self, modules) -> None:
        """Give ``modules`` (about to be rounded) their original tensors back."""
        ids = {id(m) for m in modules}
        for key in [k for k in self.saved if k[0] in ids]:
            module, original, is_param = self.saved.pop(key)
            self._set(module, key[1], original, is_param)

    def close(self) -> None:
        """Give back the original tensors of everything still in the block (replaced modules
        are gone from it; their entries are simply dropped)."""
        alive = {id(m) for m in self.block.modules()}
        for (mid, name), (module, original, is_param) in self.saved.items():
            if mid in alive and getattr(module, name, None) is not None:
                self._set(module, name, original, is_param)
        self.saved.clear()
