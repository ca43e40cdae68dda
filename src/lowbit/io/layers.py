"""The quantized layers of a model, grouped by format, and module swapping for loaders.

Exporters see a model as "these QuantLinear modules, in these formats"; loaders build the
reverse: given module names and formats, put a module with the checkpoint's tensor layout in
place of each float linear before transformers fills in the tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..arch import get_module, set_module
from ..errors import InputError
from ..formats import FormatSpec
from ..modules import QuantLinear


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def act_quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The weight-and-activation quantized linears (W8A8 int8, LLM.int8, FP8)."""
    from ..modules import ActQuantLinear
    return {name: m for name, m in model.named_modules() if isinstance(m, ActQuantLinear)}


def lowbit_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every lowbit quantized linear, weight-only or not."""
    return {**quantized_modules(model), **act_quantized_modules(model)}


def group_by_format(layers: dict[str, QuantLinear]) -> list[tuple[FormatSpec, list[str]]]:
    """``[(spec, [names...]), ...]``, the group with the most layers first (it becomes the default)."""
    groups: dict[FormatSpec, list[str]] = {}
    for name, m in layers.items():
        groups.setdefault(m.spec, []).append(name)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def float_linear_dims(module: nn.Module, name: str) -> tuple[int, int, bool]:
    """``(out_features, in_features, has_bias)`` of an ``nn.Linear`` or transformers ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, module.bias is not None
    if type(module).__name__ == "Conv1D":  # GPT-2 style: weight stored (in, out)
        in_f, out_f = module.weight.shape
        return out_f, in_f, module.bias is not None
    raise InputError(f"{name}: checkpoint says it is quantized, but the model has a "
                     f"{type(module).__name__} there, not a linear layer")


def swap_modules(model: nn.Module, names: list[str], build: Callable[[str, nn.Module], nn.Module]) -> None:
    """Replace each named module by ``build(name, old_module)``."""
    for name in names:
        old = get_module(model, name)
        if old is None:
            raise InputError(f"checkpoint names layer {name}, which this model does not have")
        set_module(model, name, build(name, old))


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    w = module.weight
    return w.device, w.dtype


def spec_scale_dtype(spec: FormatSpec, weight_dtype: torch.dtype) -> torch.dtype:
    """The float dtype of a layer's scales (and bias); coded scales keep their own code dtype, so
    the bias takes the model's."""
    return getattr(torch, spec.scale_dtype) if spec.scale_dtype and not spec.coded_scales else weight_dtype


def float_linear_names(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Names of the linears (``nn.Linear`` or ``Conv1D``) left in float, but for ``skip``."""
    return [name for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
            and name.rpartition(".")[2] not in skip and name not in skip]


# ---- checking another layout's tensors before converting them (GPTQ, AWQ importers) -----------

def require_tensors(layer: str, tensors: dict[str, torch.Tensor], names: tuple[str, ...], layout: str) -> None:
    from .files import CheckpointError

    missing = [n for n in names if n not in tensors]
    if missing:
        raise CheckpointError(f"{layout} checkpoint: layer {layer} is missing tensor {layer}.{missing[0]}")


def check_tensor(layer: str, key: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None) -> None:
    """A one-line CheckpointError unless ``t`` has ``shape`` (and ``dtype``, when given)."""
    from .files import CheckpointError

    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{layer}.{key} has shape {list(t.shape)}, expected {list(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise CheckpointError(f"{layer}.{key} has dtype {t.dtype}, expected {dtype}")
