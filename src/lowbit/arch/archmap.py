"""The shape of per-architecture knowledge: where things are, and which op feeds which linears.

Paths are dotted attribute paths: model-level ones from the top-level ``*ForCausalLM`` module,
block-level ones from one decoder block. An empty path means "not there" (no final norm; a group
fed by the block's input rather than by an op inside the block).
"""
from __future__ import annotations

from dataclasses import dataclass

FEEDER_KINDS = ("rmsnorm", "rmsnorm_offset", "layernorm", "linear", "none")


@dataclass(frozen=True)
class LinearGroup:
    """Linears that read the same input, and the op that produces it.

    ``feeder_kind`` says how a per-input-channel scale of the linears can be folded into the
    feeder so that the block's output is unchanged:
    ``rmsnorm`` (divide the weight), ``rmsnorm_offset`` (gemma's ``(1 + w)``: divide ``1 + w``),
    ``layernorm`` (divide weight and bias), ``linear`` (divide the feeder's output rows and bias,
    e.g. v -> o and up -> down), or ``none`` (nothing can absorb it: the op is non-linear, sits
    outside the block, or its output also feeds the residual stream; transforms must skip it).

    A ``linear`` feeder may be wider than the linears' input: they read its *trailing* output
    rows (v of a fused qkv, up of a fused gate_up). An attention output projection reads each
    value head repeated ``num_heads / num_kv_heads`` times (grouped-query attention), so a scale
    folded into v must be equal across the query heads that share a value head.
    """

    feeder: str
    linears: tuple[str, ...]
    feeder_kind: str = "rmsnorm"

    def __post_init__(self):
        if self.feeder_kind not in FEEDER_KINDS:
            raise ValueError(f"feeder kind {self.feeder_kind!r} is not one of {FEEDER_KINDS}")
        if not self.feeder and self.feeder_kind != "none":
            raise ValueError(f"group {self.linears}: a group without a feeder must be 'none'")


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
    # Config attributes that must hold for this row: a variant of a model type whose blocks are
    # wired differently, e.g. OPT-350m's post-layer-norm blocks (("do_layer_norm_before", False),).
    when: tuple[tuple[str, object], ...] = ()

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

    def matches(self, config) -> bool:
        return all(getattr(config, key, None) == value for key, value in self.when)


def rows(*maps: ArchMap) -> dict[str, ArchMap]:
    """model_type -> its default row (the one without ``when``); exactly one per model type."""
    table: dict[str, ArchMap] = {}
    for m in maps:
        for t in m.model_types:
            if m.when:
                continue
            if t in table:
                raise ValueError(f"model type {t!r} has two default rows: {table[t].name}, {m.name}")
            table[t] = m
    return table


def variants(*maps: ArchMap) -> dict[str, tuple[ArchMap, ...]]:
    """model_type -> its variant rows (those with ``when``), tried before the default row."""
    table: dict[str, tuple[ArchMap, ...]] = {}
    for m in maps:
        for t in m.model_types:
            if m.when:
                table[t] = (*table.get(t, ()), m)
    return table


__all__ = ["FEEDER_KINDS", "ArchMap", "LinearGroup", "rows", "variants"]
