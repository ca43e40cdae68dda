"""Reuse what a block's already-rounded parts compute, in the later passes of a true-sequential walk.

A true-sequential walk runs every calibration batch through the block once per stage (q/k/v,
o, gate/up, down) and once more to make the next block's inputs. Once a stage is rounded, the
parts of the block made only of rounded linears see the same inputs in every later pass
(everything upstream of them is final), so they compute the same outputs: q/k/v would run four
times, the attention three, gate/up twice. ``ReplayOutputs`` wraps, after each stage, the largest
submodules holding rounded linears and no linear still to be rounded (q/k/v alone after the
first stage; the whole attention module once o is rounded too), keeps each one's output per
batch the first time it is computed and returns it afterwards. Every linear of the block then
runs once in its quantized form and the attention once more than in an RTN forward; the results
are bit-identical to recomputing (tests compare the checkpoints of both walks).

Outputs cost memory, so they are kept only while the total fits a byte budget (the rest are
recomputed as before); when an enclosing module's output is kept for a batch, the outputs of the
wrapped modules inside it are dropped for that batch. Each kept output carries a checksum of the
input it was computed from: if a later pass ever feeds a different input (an architecture whose
stage order is not its dependency order), the output is recomputed, never replayed stale.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import get_module, set_module

GIB = 1024 ** 3


def default_replay_memory(device: torch.device) -> int:
    """On a CPU 0.5 GiB (SmolLM2 with 128x512 calibration tokens: q/k/v outputs 240 MiB, the
    attention's 144 MiB, gate/up 768 MiB, which are computed twice without replay and stay
    out), so that calibrating costs no more host memory than llm-compressor's; on an
    accelerator nothing: its forwards are cheap next to GPTQ's column loop, and its memory is
    the scarce part."""
    return GIB // 2 if device.type == "cpu" else 0


def _inside(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def wrap_targets(rounded, pending) -> set[str]:
    """Block-relative paths of the largest submodules that hold some ``rounded`` linear and no
    ``pending`` one (a linear itself when its parent holds a pending one)."""
    targets = set()
    for path in rounded:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):  # shortest prefix first: the largest module
            prefix = ".".join(parts[:k])
            if not any(_inside(p, prefix) for p in pending):
                targets.add(prefix)
                break
    return targets


def replay_bytes(stages, out_features: dict[str, int], width: int, tokens: int, elem: int) -> int:
    """What a ``ReplayOutputs`` without a budget would hold at most for one block: after each
    stage but the last, the outputs of ``wrap_targets`` (a linear: its ``out_features``; a larger
    module: ``width``, the block's hidden size)."""
    paths = [p for stage in stages for p in stage]
    peak, done = 0, []
    for k, stage in enumerate(stages[:-1]):
        done += list(stage)
        pending = paths[len(done):]
        held = sum(out_features.get(t, width) for t in wrap_targets(done, pending))
        peak = max(peak, held * tokens * elem)
    return peak


class _Replayed(nn.Module):
    """Stands in for a finished part of a block while the block is calibrated."""

    def __init__(self, inner: nn.Module, store: "ReplayOutputs", key: str):
        super().__init__()
        self.inner = inner
        self._store = store
        self._key = key

    def forward(self, *args, **kwargs):
        return self._store.lookup(self._key, self.inner, args, kwargs)


def _checksum(x: torch.Tensor) -> tuple:
    # Two float64 sums: any change of the input (a differently rounded upstream layer) moves them.
    return (tuple(x.shape), x.dtype, torch.sum(x, dtype=torch.float64).item(),
            torch.sum(x[..., ::7], dtype=torch.float64).item())


def _nbytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    return 0


class ReplayOutputs:
    """Per-batch outputs of the wrapped parts of one block, within ``budget`` bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.batch = 0
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._outputs: dict[tuple[str, int], tuple[tuple, object, int]] = {}
        self._wrapped: dict[str, nn.Module] = {}  # path -> the module it replaced
        self._inside: dict[str, list[str]] = {}  # path -> wrapped paths within it

    def set_batch(self, b: int) -> None:
        self.batch = b

    def keep(self, block: nn.Module, rounded: list[str], pending: list[str]) -> None:
        """After a stage: wrap the largest submodules of ``block`` that hold some of the
        ``rounded`` linear paths and none of the ``pending`` ones."""
        if self.budget <= 0:
            return
        targets = wrap_targets(rounded, pending)
        for path in sorted(targets):
            if path in self._wrapped:
                continue
            within = [p for p in self._wrapped if _inside(p, path)]
            self._inside[path] = within
            # The module as it stands holds the wrappers of ``within``: a miss still replays them.
            module = get_module(block, path)
            self._wrapped[path] = module
            set_module(block, path, _Replayed(module, self, path))

    def lookup(self, key: str, inner: nn.Module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
        check = _checksum(x) if isinstance(x, torch.Tensor) else None
        slot = (key, self.batch)
        seen = self._outputs.get(slot)
        if seen is not None and check is not None and seen[0] == check:
            self.hits += 1
            return seen[1]
        if seen is not None:
            self.misses += 1
            self._drop(slot)
        out = inner(*args, **kwargs)
        size = _nbytes(out)
        if check is not None and self.used + size - self._freed_by(key) <= self.budget:
            for p in self._inside.get(key, ()):
                self._drop((p, self.batch))
            self._outputs[slot] = (check, out, size)
            self.used += size
        return out

    def _freed_by(self, key: str) -> int:
        return sum(self._outputs[(p, self.batch)][2] for p in self._inside.get(key, ())
                   if (p, self.batch) in self._outputs)

    def _drop(self, slot) -> None:
        seen = self._outputs.pop(slot, None)
        if seen is not None:
            self.used -= seen[2]

    def release(self, block: nn.Module) -> None:
        """Put the original modules back and drop every kept output."""
        # Outermost first: once an enclosing module is back, the paths inside it resolve again.
        for path in sorted(self._wrapped, key=lambda p: p.count(".")):
            set_module(block, path, self._wrapped[path])
        self._wrapped.clear()
        self._inside.clear()
        self._outputs.clear()
        self.used = 0
