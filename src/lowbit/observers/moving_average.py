"""Moving-average min-max: each batch's min and max, averaged exponentially over batches.

``lo ← lo + c·(batch_lo − lo)`` with ``c = averaging_constant`` (0.01, PyTorch's
``MovingAverageMinMaxObserver`` default); the first batch sets the range. A rare extreme batch
then moves the range by a fraction ``c`` of its excess instead of all of it.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import Observer


class MovingAverageMinMaxObserver(Observer):
    name = "moving_average"

    def __init__(self, target="int8", axis: int | None = None, averaging_constant: float = 0.01):
        super().__init__(target, axis)
        if not 0 < averaging_constant <= 1:
            raise InputError(f"averaging constant must be in (0, 1], got {averaging_constant}")
        self.c = averaging_constant
        self.lo = self.hi = None

    def _observe(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(1), rows.amax(1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)

    def range(self):
        self._check_seen()
        return self.lo.clone(), self.hi.clone()
