"""The RTN step of a recipe: its config, registered as the "rtn" rounder."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..errors import InputError
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
        """From a recipe step; unknown fields (here or in ``clip``) are a user error."""
        d = {k: v for k, v in d.items() if k != "method"}
        unknown = set(d) - {"clip"}
        if unknown:
            raise InputError(f"rtn step: unknown fields {sorted(unknown)} (known: ['clip'])")
        clip = d.get("clip", vars(ClipSearch()))
        if clip in (None, False):
            return cls(clip=None)
        if clip is True:
            return cls()
        if not isinstance(clip, dict):
            raise InputError(f"rtn step: clip must be a mapping, false or null, got {clip!r}")
        known = {f.name for f in fields(ClipSearch)}
        if set(clip) - known:
            raise InputError(f"rtn step: unknown clip fields {sorted(set(clip) - known)} "
                             f"(known: {sorted(known)})")
        return cls(clip=ClipSearch(**clip))


@register_rounder("rtn", RTNConfig)
def apply_rtn(w: torch.Tensor, spec: FormatSpec, config: RTNConfig, _stats=None) -> QuantizedWeight:
    return rtn(w, spec, config.clip)
