"""The AWQ step of a recipe: its config, registered as the "awq" transform (needs calibration).

A transform changes the float model before the recipe's rounder (its last step) rounds it; the
block-level work (statistics, folding the scales into the feeding ops) is ``pipeline/awq_block.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import InputError
from .registry import register_transform, step_fields
from .rtn import ClipSearch


@dataclass(frozen=True)
class AWQConfig:
    """``grid`` points of α in [0, 1]; ``duo``: divide by the weights' normalised magnitude too;
    ``clip``: the output-error clipping search on the scaled weights (None: off);
    ``loss_tokens``: calibration tokens sampled (seeded by ``seed``) for the Gram matrices that
    measure the output error (None: every token). The mean ``|x|`` statistic always uses every
    token; the loss only ranks 20 candidates, and 16k tokens estimate a 576- to 1536-wide Gram
    matrix well enough for that at a quarter of the cost of the 65k of ``pydoc-128x512``.
    """

    grid: int = 20
    duo: bool = True
    clip: ClipSearch | None = ClipSearch()
    loss_tokens: int | None = 16384
    seed: int = 0

    def __post_init__(self):
        if self.grid < 1:
            raise InputError(f"awq: grid must be >= 1, got {self.grid}")
        if self.loss_tokens is not None and self.loss_tokens < 1:
            raise InputError(f"awq: loss_tokens must be >= 1 or null, got {self.loss_tokens}")
        if self.clip is not None and self.clip.norm != 2:
            raise InputError("awq: the clip search measures output error, so its norm must be 2")

    def to_dict(self) -> dict:
        d = {"method": "awq"}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = vars(v).copy() if isinstance(v, ClipSearch) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AWQConfig":
        d = step_fields(cls, d, "awq")
        if "clip" in d:
            clip = d.pop("clip")
            if clip in (None, False):
                d["clip"] = None
            elif clip is True:
                d["clip"] = ClipSearch()
            elif isinstance(clip, dict):
                d["clip"] = ClipSearch(**clip)
            else:
                raise InputError(f"awq step: clip must be a mapping, true, false or null, got {clip!r}")
        return cls(**d)


register_transform("awq", AWQConfig)
