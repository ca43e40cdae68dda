"""The observer interface: see batches of values, then propose a range and its scale/zero.

Granularity is one idea, the axis whose entries keep their own range: ``axis=None`` is
per-tensor (one range), ``axis=-1`` per input channel of an activation ``(..., in)``, ``axis=0``
per output row of a weight ``(out, in)``. Every observer reduces everything else.

Statistics are kept in float32 (float64 where a sum of many terms is formed); ``range()`` and
``qparams()`` may be called at any time and do not change the state.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .grid import Grid, grid_for


def by_channel(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``(channels, n)``: one row per entry of ``axis`` (a single row when per-tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer:
    """Base class: subclasses implement ``_observe((C, n) float tensor)`` and ``range()``."""

    name = "observer"

    def __init__(self, target="int8", axis: int | None = None):
        self.grid: Grid = grid_for(target)
        self.axis = axis
        self.channels: int | None = None

    def observe(self, x: torch.Tensor) -> None:
        rows = by_channel(x.detach(), self.axis)
        if rows.shape[1] == 0:
            return
        if self.channels is None:
            self.channels = rows.shape[0]
        elif rows.shape[0] != self.channels:
            raise InputError(f"{self.name} observer: saw {self.channels} channels, now {rows.shape[0]}")
        if not torch.isfinite(rows).all():
            raise InputError(f"{self.name} observer: values hold NaN/Inf")
        self._observe(rows.float())

    def _observe(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``, each ``(channels,)`` float32."""
        raise NotImplementedError

    def qparams(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale ``(channels,)`` in ``dtype`` and integer zero (None for symmetric grids)."""
        self._check_seen()
        lo, hi = self.range()
        return self.grid.scale_zero(lo, hi, dtype)

    def _check_seen(self) -> None:
        if self.channels is None:
            raise InputError(f"{self.name} observer has seen no values")
