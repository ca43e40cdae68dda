"""Min-max: the range is the smallest and largest value ever seen. Exact, and at the mercy of
a single outlier."""
from __future__ import annotations

import torch

from .base import Observer


class MinMaxObserver(Observer):
    name = "minmax"

    def __init__(self, target="int8", axis: int | None = None):
        super().__init__(target, axis)
        self.lo = self.hi = None

    def _observe(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(1), rows.amax(1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self):
        self._check_seen()
        return self.lo.clone(), self.hi.clone()
