"""MSE search: shrink the seen range by factors on a grid, keep the one whose rounding error
``Σ |x̂ − x|^norm`` over the seen values is smallest.

The values are the histogram's bin centres weighted by their counts, so one candidate costs
one pass over ``bins`` numbers per channel however many values were seen. Ties keep the larger
range (the grid is scanned from 1 down), as lowbit's weight clipping search does.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import Observer
from .histogram import Histogram


class MSEObserver(Observer):
    name = "mse"

    def __init__(self, target="int8", axis: int | None = None, grid: int = 100,
                 min_ratio: float = 0.2, norm: float = 2.0, bins: int = 4096):
        super().__init__(target, axis)
        if grid < 1 or not 0 < min_ratio <= 1 or not norm > 0:
            raise InputError(f"mse observer: grid {grid} (>= 1), min_ratio {min_ratio} (in (0, 1]), "
                             f"norm {norm} (> 0)")
        self.ratios = torch.linspace(1.0, min_ratio, grid, dtype=torch.float64)
        self.norm = norm
        self.hist = Histogram(bins)

    def _observe(self, rows: torch.Tensor) -> None:
        self.hist.add(rows)

    def errors(self) -> torch.Tensor:
        """Rounding error per candidate ratio and channel ``(grid, C)``."""
        self._check_seen()
        h = self.hist
        x, counts = h.centers(), h.counts
        lo, hi = h.lo.double(), h.hi.double()
        out = []
        for r in self.ratios.tolist():
            scale, zero = self.grid.scale_zero(lo * r, hi * r, torch.float64)
            err = (self.grid.fake_quant(x, scale, zero) - x).abs_().pow_(self.norm)
            out.append((err * counts).sum(1))
        return torch.stack(out)

    def best_ratio(self) -> torch.Tensor:
        return self.ratios[self.errors().argmin(0)]  # argmin takes the first (largest) on ties

    def range(self):
        r = self.best_ratio()
        return (self.hist.lo.double() * r).float(), (self.hist.hi.double() * r).float()
