"""NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al., 2023): levels at quantiles of N(0, 1).

If weights are roughly normal, levels at equally spaced quantiles of the normal distribution
spend the 16 codes where the weights are (each level takes a similar share of a block), which a
uniform grid does not. QLoRA's construction makes zero exact, so it has to give up symmetry:
8 quantiles of the positive half, 7 of the negative half, and 0,

    positive: Φ⁻¹(p) for p = linspace(δ, 1/2, 9) without its last point (1/2 would be 0 again)
    negative: −Φ⁻¹(p) for p = linspace(δ, 1/2, 8) without its last point
    δ = 1 − (1/(2·15) + 1/(2·16)) / 2 = 0.96770833…

(δ lies between the outermost quantiles of 15 and of 16 equal bins: the infinite tails of
Φ⁻¹(1) are avoided), sorted ascending and divided by the largest, so the table spans [−1, 1]
with −1 and +1 both present. Code ``q`` is the index into the sorted table (code 7 is 0.0), as
bitsandbytes numbers them. Blocks are scaled by their absmax (``formats/levels.py``); packed
4-bit codes sit two per byte, the lower-indexed one in the low nibble (``int32-lsb`` words,
read as little-endian bytes).
"""
from __future__ import annotations

import torch

from .levels import register_levels

# Outermost quantile: between those of 15 and 16 equal-probability bins.
NF4_OFFSET = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2


def normal_float_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels in float64, ascending, normalised to [-1, 1] (exact 0 at index 7)."""
    def quantiles(n: int) -> torch.Tensor:
        p = torch.linspace(offset, 0.5, n, dtype=torch.float64)[:-1]
        return torch.special.ndtri(p)

    positive, negative = quantiles(9), -quantiles(8)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return levels / levels.max()


@register_levels("nf")
def nf4_levels() -> torch.Tensor:
    return normal_float_levels()
