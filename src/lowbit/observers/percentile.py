"""Percentile: the range ends where ``percentile`` % of the values lie inside (99.99 by default).

Symmetric grids clip ``|x|`` at its percentile; asymmetric ones take the lower and upper
percentiles of ``x``. Read off the histogram (linear inside a bin, so off by at most one bin
width from the exact order statistic) and never beyond the range seen.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import Observer
from .histogram import Histogram


class PercentileObserver(Observer):
    name = "percentile"

    def __init__(self, target="int8", axis: int | None = None, percentile: float = 99.99,
                 bins: int = 4096):
        super().__init__(target, axis)
        if not 0 < percentile <= 100:
            raise InputError(f"percentile must be in (0, 100], got {percentile}")
        self.q = percentile / 100
        self.hist = Histogram(bins)

    def _observe(self, rows: torch.Tensor) -> None:
        self.hist.add(rows)

    def range(self):
        self._check_seen()
        h = self.hist
        if self.grid.sym:
            amax = torch.minimum(h.quantile(self.q, of_magnitude=True),
                                 torch.maximum(-h.lo, h.hi).double())
            return (-amax).float(), amax.float()
        lo = torch.maximum(h.quantile(1 - self.q), h.lo.double())
        hi = torch.minimum(h.quantile(self.q), h.hi.double())
        return lo.float(), hi.float()
