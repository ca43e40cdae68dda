"""A per-channel histogram of seen values, for the observers that choose a range by its effect.

``bins`` equal bins over ``[-R, R]`` per channel, ``R`` the largest magnitude seen so far. When a
larger value arrives, ``R`` grows by a power of two and every ``2^k`` neighbouring bins merge
into one: bin edges stay aligned, so re-binning is exact (no mass is split or guessed) and the
counts never depend on the order the batches came in beyond that alignment. Counts are float64
(exact up to 2^53 values per bin). Zero always falls in bin ``bins/2``, ``[0, w)``.

The exact minimum and maximum are kept beside the counts, so observers never propose a range
beyond what was seen.
"""
from __future__ import annotations

import torch

from ..errors import InputError

_MAX_GROWTH = 1 << 40  # past this, every old bin lands in one of the two middle bins anyway


class Histogram:
    def __init__(self, bins: int = 4096):
        if bins < 4 or bins % 2:
            raise InputError(f"histogram bins must be an even number >= 4, got {bins}")
        self.bins = bins
        self.counts: torch.Tensor | None = None  # (C, bins) float64
        self.radius: torch.Tensor | None = None  # (C,) float64; 0 until a channel sees a non-zero
        self.lo: torch.Tensor | None = None      # (C,) exact min seen
        self.hi: torch.Tensor | None = None      # (C,) exact max seen

    def add(self, rows: torch.Tensor) -> None:
        """``rows (C, n)`` float32."""
        C = rows.shape[0]
        amax = rows.abs().amax(1).double()
        if self.counts is None:
            self.counts = torch.zeros(C, self.bins, dtype=torch.float64, device=rows.device)
            self.radius = torch.zeros(C, dtype=torch.float64, device=rows.device)
            self.lo, self.hi = rows.amin(1), rows.amax(1)
        else:
            self.lo, self.hi = torch.minimum(self.lo, rows.amin(1)), torch.maximum(self.hi, rows.amax(1))
        self._grow(amax)
        radius = torch.where(self.radius > 0, self.radius, torch.ones_like(self.radius))
        width = 2 * radius / self.bins
        idx = torch.floor((rows.double() + radius.unsqueeze(1)) / width.unsqueeze(1))
        idx = idx.clamp_(0, self.bins - 1).long() + self.bins * torch.arange(C, device=rows.device).unsqueeze(1)
        flat = torch.bincount(idx.reshape(-1), minlength=C * self.bins)
        self.counts += flat.reshape(C, self.bins).double()

    def _grow(self, amax: torch.Tensor) -> None:
        unset = (self.radius == 0) & (amax > 0)
        # A channel that saw only zeros so far: they sit in bin bins/2 under any radius.
        self.radius = torch.where(unset, amax, self.radius)
        over = (self.radius > 0) & (amax > self.radius)
        if not bool(over.any()):
            return
        k = torch.ceil(torch.log2(amax / self.radius)).clamp_min(1)
        factor = torch.where(over, torch.exp2(k), torch.ones_like(k))
        # Float rounding in log2 may leave factor * radius a hair below amax.
        factor = torch.where(factor * self.radius < amax, factor * 2, factor)
        f = factor.clamp_max(_MAX_GROWTH).long().unsqueeze(1)
        half = self.bins // 2
        old = torch.arange(self.bins, device=self.counts.device).unsqueeze(0) - half
        new = torch.div(old, f, rounding_mode="floor") + half  # exact: edges are aligned
        merged = torch.zeros_like(self.counts)
        merged.scatter_add_(1, new.expand_as(self.counts), self.counts)
        self.counts = merged
        self.radius = self.radius * factor

    @property
    def width(self) -> torch.Tensor:
        """Bin width per channel ``(C,)``."""
        return 2 * self.radius / self.bins

    def centers(self) -> torch.Tensor:
        """Bin centres ``(C, bins)`` float64."""
        b = torch.arange(self.bins, dtype=torch.float64, device=self.counts.device) + 0.5
        return -self.radius.unsqueeze(1) + b * self.width.unsqueeze(1)

    def magnitude_counts(self) -> torch.Tensor:
        """Counts of ``|x|`` in ``bins/2`` bins over ``[0, R]`` (the signed bins folded at 0)."""
        half = self.bins // 2
        return self.counts[:, half:] + self.counts[:, :half].flip(1)

    def quantile(self, q: float, of_magnitude: bool = False) -> torch.Tensor:
        """The ``q``-quantile per channel ``(C,)``, interpolated linearly inside its bin."""
        counts = self.magnitude_counts() if of_magnitude else self.counts
        start = torch.zeros_like(self.radius) if of_magnitude else -self.radius
        cdf = counts.cumsum(1)
        target = q * cdf[:, -1:]
        b = torch.searchsorted(cdf, target).clamp_(max=counts.shape[1] - 1)  # first bin reaching it
        below = torch.where(b > 0, cdf.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(target))
        inside = counts.gather(1, b).clamp_min(1e-300)
        frac = ((target - below) / inside).clamp_(0, 1)
        return (start.unsqueeze(1) + (b + frac) * self.width.unsqueeze(1)).squeeze(1)
