"""Which kernel computes a quantized module's forward, chosen per (device type, module kind).

Kernels register themselves; the reference kernel is the fallback everywhere, so a module works
on any device even when no specialised kernel exists for it.
"""
from __future__ import annotations

from typing import Callable

import torch

from .reference import weight_only_linear

Kernel = Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]
_KERNELS: dict[tuple[str, str], Kernel] = {}
_FALLBACK: dict[str, Kernel] = {"weight_only": weight_only_linear}


def register_kernel(device_type: str, module_kind: str):
    def wrap(fn: Kernel) -> Kernel:
        _KERNELS[(device_type, module_kind)] = fn
        return fn
    return wrap


def select_kernel(device_type: str, module_kind: str) -> Kernel:
    return _KERNELS.get((device_type, module_kind)) or _FALLBACK[module_kind]


def run(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return select_kernel(x.device.type, module.kernel_kind)(x, module)
