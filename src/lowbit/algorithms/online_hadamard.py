"""The ``online_hadamard`` transform step's config: QuaRot's R4, an online randomized Hadamard
rotation of some linears' inputs (by default each block's MLP output projection, ``down_proj``),
with the weights rotated to match (``pipeline/online_hadamard_block.py``,
``modules/input_hadamard.py``).

It changes the forward pass (the layer rotates its inputs at run time), so the checkpoint needs
lowbit to load (native layout). It must be the recipe's last transform: a later SmoothQuant or AWQ
would fold a per-channel scale into rotated channels.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .registry import register_transform, step_fields


@dataclass(frozen=True)
class OnlineHadamardConfig:
    """``linears``: block-relative paths (or suffixes) of the linears whose inputs are rotated;
    empty: the block's last input group in the architecture table (the MLP's output projection).
    ``seed``: of the random signs (block ``i`` uses ``seed + i``)."""

    linears: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.linears, (list, str)):
            object.__setattr__(self, "linears", tuple([self.linears] if isinstance(self.linears, str)
                                                      else self.linears))
        if not all(isinstance(p, str) and p for p in self.linears):
            raise InputError(f"online_hadamard: linears must be module paths, got {self.linears!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"online_hadamard: seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        d = {"method": "online_hadamard", "seed": self.seed}
        if self.linears:
            d["linears"] = list(self.linears)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OnlineHadamardConfig":
        return cls(**step_fields(cls, d, "online_hadamard"))


register_transform("online_hadamard", OnlineHadamardConfig)
