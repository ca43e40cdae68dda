"""The shape of per-architecture knowledge: where things are, and which op feeds which linears.

Paths are dotted attribute paths: model-level ones from the top-level ``*ForCausalLM`` module,
block-level ones from one decoder block.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearGroup:
    """Linears that read the same input, and the op that produces it.

    ``feeder_kind`` says how a per-input-channel scale can be folded into the feeder:
    ``rmsnorm`` (scale the weight), ``rmsnorm_offset`` (gemma's ``1 + w``: scale ``1 + w``),
    ``layernorm`` (scale weight and bias), ``linear`` (scale the feeder's output rows, e.g.
    v → o and up → down), or ``none`` (nothing can absorb it; transforms must skip with a note).
    """

    feeder: str
    linears: tuple[str, ...]
    feeder_kind: str = "rmsnorm"


@dataclass(frozen=True)
class ArchMap:
    name: str
    model_types: tuple[str, ...]
    blocks: str
    embeddings: tuple[str, ...]
    final_norm: str
    head: str
    groups: tuple[LinearGroup, ...] = ()
    # GPT-2 style transformers.Conv1D stores weights as (in, out).
    conv1d: bool = False
    # Unknown architectures: quantize every nn.Linear found inside the blocks.
    fallback: bool = False

    @property
    def linears(self) -> tuple[str, ...]:
        """Block-relative paths of every quantizable linear, in execution order, once each."""
        seen: list[str] = []
        for g in self.groups:
            seen += [n for n in g.linears if n not in seen]
        return tuple(seen)

    def sequential_stages(self) -> tuple[tuple[str, ...], ...]:
        """Linears grouped by shared input, in dependency order (for true-sequential walks)."""
        return tuple(g.linears for g in self.groups)


def rows(*maps: ArchMap) -> dict[str, ArchMap]:
    table: dict[str, ArchMap] = {}
    for m in maps:
        for t in m.model_types:
            table[t] = m
    return table


__all__ = ["ArchMap", "LinearGroup", "rows"]
