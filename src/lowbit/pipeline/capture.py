"""Capture what the decoder blocks are called with, for every calibration batch.

The model's own forward is run once per batch with every block's ``forward`` replaced by a
recorder: the recorder of block 0 keeps the hidden states, every recorder keeps the positional
and keyword arguments its block was given (attention mask, position ids, rotary cos/sin, cache
flags, ...), and the last one stops the forward so neither the final norm nor the head runs.
Arguments are kept per block because they can differ between blocks: gemma2/3 and qwen2 pass a
sliding-window mask (and gemma3 a different rotary table) to some layers and a full one to others.
Tensors shared between blocks stay one object, so this costs no memory per block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchMap, blocks_of
from ..errors import InputError


class _StopForward(Exception):
    """Raised inside a forward once everything needed has been seen."""


@dataclass
class BlockInputs:
    """``hidden[b]``: the input of the current block for batch ``b`` (``(batch, seq, hidden)``);
    ``calls[b][i]``: ``(args, kwargs)`` that block ``i`` receives for batch ``b``, besides it."""

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]

    def call(self, batch: int, block: int) -> tuple[tuple, dict]:
        return self.calls[batch][block]

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def default_batch_size(device: torch.device) -> int:
    """Calibration windows per block forward: 4 on a CPU, 16 on an accelerator. On a CPU the
    batch's activations share the host with the model and the calibration hidden states: SmolLM2
    GPTQ peaks 0.28 GiB lower at 4 than at 16 (one block, 128 x 512 tokens; the whole model 1.70
    GiB against 1.97), and a 4 x 512-token batch still gives the matmuls 2048 rows (speed was not
    compared side by side). An accelerator's batch lives in its own memory, and larger ones keep
    it busy."""
    return 4 if device.type == "cpu" else 16


def calibration_batches(calib, batch_size: int) -> list[torch.Tensor]:
    """``calib``: token ids ``(n, seq)`` or a sequence of 1-D id tensors. Consecutive windows of
    equal length are batched together, at most ``batch_size`` per batch."""
    if batch_size < 1:
        raise InputError(f"calibration batch size must be >= 1, got {batch_size}")
    rows = list(calib) if not isinstance(calib, torch.Tensor) else list(calib.reshape(-1, calib.shape[-1]))
    rows = [torch.as_tensor(r).reshape(-1) for r in rows]
    if not rows or any(r.numel() == 0 for r in rows):
        raise InputError("calibration data is empty: need at least one non-empty window of token ids")
    batches, current = [], [rows[0]]
    for r in rows[1:]:
        if len(current) < batch_size and r.numel() == current[0].numel():
            current.append(r)
        else:
            batches.append(torch.stack(current))
            current = [r]
    batches.append(torch.stack(current))
    return [b.long() for b in batches]


def move(obj, device, memo: dict, dtype: torch.dtype | None = None):
    """``obj`` with every tensor inside (tuples, lists, dicts) on ``device``, and every floating
    one in ``dtype`` (None: as it is); a tensor seen twice is converted once (``memo`` maps ``id``
    to the original and its converted copy)."""
    if isinstance(obj, torch.Tensor):
        to_dtype = dtype if dtype is not None and obj.is_floating_point() else obj.dtype
        if obj.device == torch.device(device) and obj.dtype == to_dtype:
            return obj
        seen = memo.get(id(obj))
        # The memo keeps the original alive: once a tensor is freed, Python may give its id to
        # a new one (the next batch's rotary table), which must not get the old copy.
        if seen is None or seen[0] is not obj:
            seen = memo[id(obj)] = (obj, obj.to(device, to_dtype))
        return seen[1]
    if isinstance(obj, tuple):
        return tuple(move(o, device, memo, dtype) for o in obj)
    if isinstance(obj, list):
        return [move(o, device, memo, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: move(v, device, memo, dtype) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(model: nn.Module, arch: ArchMap, batches: list[torch.Tensor],
                         device=None, hidden_device=None, dtype: torch.dtype | None = None) -> BlockInputs:
    """Run the model's front (embeddings, masks, rotary tables) on each batch and record the
    inputs of every block. Arguments go to ``device``, hidden states to ``hidden_device``
    (default ``device``); None keeps them where the model made them. ``dtype``: what the hidden
    states and floating arguments are kept in (None: as the model made them), converted batch by
    batch so the model-dtype copy of all of them never exists at once."""
    blocks = blocks_of(model, arch)
    first_param = next(model.parameters())
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = []
    memo: dict = {}

    def recorder(index: int):
        def forward(*args, **kwargs):
            h = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                hidden.append(to_hidden_device(h if dtype is None else h.to(dtype),
                                               hidden_device or device or h.device))
            calls[-1].append(move((tuple(args[1:]), kwargs), device or h.device, memo, dtype))
            if index == len(blocks) - 1:
                raise _StopForward
            # The blocks after this one only need their arguments, which do not depend on the
            # hidden states, so pass them through unchanged.
            return h
        return forward

    try:
        for i, block in enumerate(blocks):
            block.forward = recorder(i)
        for ids in batches:
            calls.append([])
            try:
                model(input_ids=ids.to(first_param.device), use_cache=False)
            except _StopForward:
                pass
            if len(calls[-1]) != len(blocks):
                raise InputError(
                    f"{arch.name}: the model's forward called {len(calls[-1])} of its "
                    f"{len(blocks)} decoder blocks; cannot calibrate block by block")
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
    return BlockInputs(hidden, calls)


def to_hidden_device(t: torch.Tensor, hidden_device) -> torch.Tensor:
    """``t`` on ``hidden_device``; activations offloaded from an accelerator to the CPU go into
    pinned memory, which copies back and forth about twice as fast as pageable memory (they
    cross the bus once or twice per block and batch)."""
    hidden_device = torch.device(hidden_device) if hidden_device is not None else t.device
    if hidden_device.type == "cpu" and t.is_cuda:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t)
        return host
    return t.to(hidden_device)


def run_block(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """The block's output hidden states (decoder layers return a tensor or a tuple led by it)."""
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
