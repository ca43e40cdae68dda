"""Which kernel computes a quantized module's forward, chosen per (device type, module kind).

Kernels register themselves; the reference kernel is the fallback everywhere, so a module works
on any device even when no specialised kernel exists for it.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .reference import weight_only_linear
from .reference_w8a8 import fp8_linear, llm_int8_linear, w8a8_int8_linear

Kernel = Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]
_KERNELS: dict[tuple[str, str], Kernel] = {}
_FALLBACK: dict[str, Kernel] = {"weight_only": weight_only_linear, "w8a8_int8": w8a8_int8_linear,
                                "llm_int8": llm_int8_linear, "fp8": fp8_linear}


def register_kernel(device_type: str, module_kind: str):
    def wrap(fn: Kernel) -> Kernel:
        _KERNELS[(device_type, module_kind)] = fn
        return fn
    return wrap


def select_kernel(device_type: str, module_kind: str) -> Kernel:
    return _KERNELS.get((device_type, module_kind)) or _FALLBACK[module_kind]


def run(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return select_kernel(x.device.type, module.kernel_kind)(x, module)


_TUNING_PAUSED = 0


def tuning_allowed() -> bool:
    """Whether a kernel may time its candidate configurations now (see ``tuning_paused``)."""
    return _TUNING_PAUSED == 0


@contextlib.contextmanager
def tuning_paused():
    """Kernels use their untimed default choices inside: the calibration walk runs quantized
    blocks on batch sizes inference never sees, and timing candidates there costs seconds."""
    global _TUNING_PAUSED
    _TUNING_PAUSED += 1
    try:
        yield
    finally:
        _TUNING_PAUSED -= 1
