"""The RTN step of a recipe: its config, registered as the "rtn" rounder."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import FormatSpec
from .quantized_weight import QuantizedWeight
from .registry import register_rounder
from .rtn import ClipSearch, rtn


@dataclass(frozen=True)
class RTNConfig:
    """Round to nearest; ``clip`` (grid search on each block's range) is off when None."""

    clip: ClipSearch | None = ClipSearch()

    def to_dict(self) -> dict:
        return {"method": "rtn", "clip": None if self.clip is None else vars(self.clip).copy()}

    @classmethod
    def from_dict(cls, d: dict) -> "RTNConfig":
        d = {k: v for k, v in d.items() if k != "method"}
        unknown = set(d) - {"clip"}
        if unknown:
            raise ValueError(f"rtn: unknown fields {sorted(unknown)}")
        clip = d.get("clip", vars(ClipSearch()))
        return cls(clip=None if clip in (None, False) else ClipSearch(**(clip if isinstance(clip, dict) else {})))


@register_rounder("rtn", RTNConfig)
def apply_rtn(w: torch.Tensor, spec: FormatSpec, config: RTNConfig, _stats=None) -> QuantizedWeight:
    return rtn(w, spec, config.clip)
