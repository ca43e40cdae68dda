"""Activation statistics from calibration data.

- ``group_input_absmax``: per-channel ``max|x|`` of the inputs of some input groups of one
  block, on the block as it is (SmoothQuant's statistic), from the block-by-block walk's inputs.
- ``calibrate_input_scales``: the static input scale of every static W8A8 layer of a quantized
  model. One forward of the whole model per calibration batch, hooks feeding one observer per
  input group (linears reading the same input share it), the forward cut short before the head.
  While calibrating, the layers quantize their inputs per token (dynamic), so each layer sees
  inputs shaped by the quantization of the layers before it, much as the finished static model
  will; a block-by-block static calibration would follow the final model more closely, at one
  extra block pass per input group. On models this size one full pass is cheap; see docs.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import arch_for, blocks_of, get_module
from ..formats.activations import ActivationSpec
from ..modules.act_linear import ActQuantLinear
from ..observers import make_observer
from .capture import BlockInputs, _StopForward, calibration_batches, run_block, to_hidden_device


@torch.no_grad()
def group_input_absmax(block: nn.Module, block_index: int, groups: list[tuple[str, ...]],
                       inputs: BlockInputs, device, keep_outputs: bool = False, hidden_device=None):
    """``[max|x| per input channel (in,)]`` per group (float32, or the input's dtype if wider),
    and the block's outputs per batch
    (on ``hidden_device``) when ``keep_outputs`` (else None; the forward stops early then)."""
    absmax: list[torch.Tensor | None] = [None] * len(groups)
    seen: set[int] = set()
    handles = []
    for k, paths in enumerate(groups):
        def hook(_module, args, k=k):
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(0)
            m = m.to(torch.promote_types(m.dtype, torch.float32))
            absmax[k] = m if absmax[k] is None else torch.maximum(absmax[k], m)
            seen.add(k)
            if not keep_outputs and len(seen) == len(groups):
                raise _StopForward
        handles.append(get_module(block, paths[0]).register_forward_pre_hook(hook))
    outputs = [] if keep_outputs else None
    try:
        for b, hidden in enumerate(inputs.hidden):
            seen.clear()
            args, kwargs = inputs.call(b, block_index)
            try:
                out = run_block(block, hidden.to(device), args, kwargs)
            except _StopForward:
                continue
            if outputs is not None:
                outputs.append(to_hidden_device(out, hidden_device or device))
    finally:
        for h in handles:
            h.remove()
    return absmax, outputs


@contextlib.contextmanager
def per_token_while_uncalibrated(root: nn.Module, everyone: bool = False):
    """Within, static W8A8 layers of ``root`` quantize their inputs per token (dynamic): those
    whose scale is still the NaN placeholder (a calibrated walk's next-block inputs and Hessians
    come from blocks rounded before any static scale exists), or with ``everyone`` all static
    ones (the static calibration pass itself). Their scales are put back on exit."""
    layers = [m for m in root.modules() if isinstance(m, ActQuantLinear) and m.static
              and (everyone or bool(torch.isnan(m.input_scale).any()))]
    saved = [m.input_scale for m in layers]
    for m in layers:
        m.input_scale = None
    try:
        yield
    finally:
        for m, scale in zip(layers, saved):
            m.input_scale = scale


def observer_target(activations: ActivationSpec) -> str:
    return "fp8" if activations.kind == "fp8" else "int8"


def _shared_input_groups(model: nn.Module) -> list[list[tuple[str, ActQuantLinear]]]:
    """Static W8A8 layers, grouped by the input they read (the architecture table's groups)."""
    arch = arch_for(model)
    groups, placed = [], set()
    for i, block in enumerate(blocks_of(model, arch)):
        for g in arch.groups:
            members = [(f"{arch.blocks}.{i}.{p}", get_module(block, p)) for p in g.linears]
            members = [(n, m) for n, m in members if isinstance(m, ActQuantLinear) and m.static]
            if members:
                groups.append(members)
                placed.update(n for n, _ in members)
    # Anything the table does not list (fallback rows) gets its own observer.
    groups += [[(n, m)] for n, m in model.named_modules()
               if isinstance(m, ActQuantLinear) and m.static and n not in placed]
    return groups


@torch.no_grad()
def observe_group_inputs(model: nn.Module, calib, new_observer: Callable[[], object], batch_size: int = 8,
                         progress: bool = True, desc: str = "calibrate inputs"):
    """Feed every input group's observer (``new_observer()``, one per group) the inputs of that
    group's static W8A8 layers, one forward per calibration batch; returns ``[(members, observer)]``
    with ``members = [(name, module)]``. Layers quantize per token meanwhile (module docstring)."""
    groups = _shared_input_groups(model)
    observers = [new_observer() for _ in groups]
    if not groups:
        return []
    handles = [members[0][1].register_forward_pre_hook(lambda _m, args, obs=obs: obs.observe(args[0]))
               for obs, members in zip(observers, groups)]
    head = get_module(model, arch_for(model).head)

    def stop(_module, _args):
        raise _StopForward
    if head is not None:
        handles.append(head.register_forward_pre_hook(stop))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with per_token_while_uncalibrated(model, everyone=True):
            for ids in tqdm(calibration_batches(calib, batch_size), desc=desc, unit="batch", disable=not progress):
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(zip(groups, observers))


def set_input_scales(observed, observer_name: str) -> list[dict]:
    """Give every layer of each group its observer's scale; one report row per layer."""
    rows = []
    for members, obs in observed:
        scale, _ = obs.qparams()
        lo, hi = obs.range()
        for name, m in members:
            m.set_input_scale(scale)
            rows.append({"name": name, "input_scale": float(scale), "observer": observer_name,
                         "input_range": [float(lo), float(hi)]})
    return rows


@torch.no_grad()
def calibrate_input_scales(model: nn.Module, calib, activations: ActivationSpec, batch_size: int = 8,
                           progress: bool = True) -> list[dict]:
    """Set ``input_scale`` of every static W8A8 layer from ``calib`` token ids; one row per layer."""
    start = time.perf_counter()
    target = observer_target(activations)
    observed = observe_group_inputs(model, calib, lambda: make_observer(activations.observer, target),
                                    batch_size, progress, f"calibrate inputs ({activations.observer})")
    rows = set_input_scales(observed, activations.observer)
    seconds = time.perf_counter() - start
    for r in rows:
        r["calibration_s"] = round(seconds / len(rows), 4)
    return rows
