"""Accumulate the Hessian of the inputs of some linears of one block over all calibration batches.

Linears that read the same input share one Hessian (one hook on the group's first linear). The
block's forward is cut short (an exception from the hook) once every hooked group has seen its
input for the batch: what comes after those linears is not needed for their statistics.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..algorithms.gptq import HessianAccumulator
from ..arch import get_module
from .capture import BlockInputs, _StopForward, run_block


def linear_in_features(module: nn.Module, conv1d: bool) -> int:
    return module.weight.shape[0] if conv1d else module.weight.shape[1]


@torch.no_grad()
def collect_hessians(block: nn.Module, block_index: int, groups: Iterable[tuple[str, ...]],
                     inputs: BlockInputs, device, conv1d: bool = False,
                     on_batch: Callable[[int], None] | None = None) -> list[HessianAccumulator]:
    """One accumulator per group of block-relative linear paths (those sharing an input);
    ``on_batch(b)`` is called before batch ``b`` runs (the replay store needs to know)."""
    groups = list(groups)
    accs, handles, seen = [], [], set()
    for k, paths in enumerate(groups):
        module = get_module(block, paths[0])
        acc = HessianAccumulator(linear_in_features(module, conv1d), device=device)
        accs.append(acc)

        def hook(_module, args, k=k, acc=acc):
            acc.add_batch(args[0])
            seen.add(k)
            if len(seen) == len(groups):
                raise _StopForward
        handles.append(module.register_forward_pre_hook(hook))
    try:
        for b, hidden in enumerate(inputs.hidden):
            seen.clear()
            if on_batch is not None:
                on_batch(b)
            args, kwargs = inputs.call(b, block_index)
            try:
                run_block(block, hidden.to(device, non_blocking=True), args, kwargs)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return accs
