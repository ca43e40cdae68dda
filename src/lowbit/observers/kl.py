"""KL / entropy calibration (TensorRT's): the clipping threshold whose rounded distribution of
``|x|`` is closest, in KL divergence, to the distribution seen.

On the ``|x|`` histogram (``bins/2`` bins over ``[0, R]``), for each candidate threshold at bin
edge ``i`` (``i >= min_bins``):

- ``P`` = the first ``i`` bins, with the mass of every bin beyond added to bin ``i − 1``
  (clipped values land on the threshold);
- ``Q`` = the same first ``i`` bins (without the clipped mass) after rounding onto the grid
  whose range is ``±threshold``: bins whose centres round to the same grid level form one
  group, and each group's mass is spread evenly over the group's bins where ``P`` is non-zero.
  With an int8 grid these groups are TensorRT's 128 merged bins; grouping by the grid itself
  also serves non-uniform grids (FP8);
- ``KL(P‖Q) = Σ p·log(p/q)`` over normalised ``P`` and ``Q``, zeros of ``Q`` where ``P > 0``
  (a group that holds only clipped mass) raised to ``eps``.

The threshold is the edge with the smallest divergence (the first on ties). Symmetric grids only.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import Observer
from .histogram import Histogram


EPS = 1e-10  # a normalised Q below this where P > 0 counts as this (a group holding only clipped mass)


class KLObserver(Observer):
    name = "kl"

    def __init__(self, target="int8", axis: int | None = None, bins: int = 4096,
                 min_bins: int = 128, stride: int = 1):
        super().__init__(target, axis)
        if not self.grid.sym:
            raise InputError("the kl observer works on |x|: it needs a symmetric grid")
        if not 1 <= min_bins <= bins // 2 or stride < 1:
            raise InputError(f"kl observer: min_bins {min_bins} must be in [1, bins/2 = {bins // 2}], "
                             f"stride {stride} >= 1")
        self.min_bins, self.stride = min_bins, stride
        self.hist = Histogram(bins)

    def _observe(self, rows: torch.Tensor) -> None:
        self.hist.add(rows)

    def candidates(self) -> range:
        n = self.hist.bins // 2
        return range(n, self.min_bins - 1, -self.stride)[::-1]

    def divergences(self, chunk: int = 256) -> torch.Tensor:
        """``(n_candidates, C)`` KL divergence per candidate edge (in :meth:`candidates` order).

        Candidates are scored ``chunk`` at a time as rows of one matrix (bins past a candidate's
        edge masked out), so a 2048-bin histogram costs a few dozen tensor ops, not thousands.
        """
        self._check_seen()
        counts = self.hist.magnitude_counts()
        edges = torch.tensor(list(self.candidates()), dtype=torch.long, device=counts.device)
        out = torch.empty(len(edges), counts.shape[0], dtype=torch.float64, device=counts.device)
        for c in range(counts.shape[0]):
            for lo in range(0, len(edges), chunk):
                out[lo:lo + chunk, c] = self._score(counts[c], self.hist.width[c], edges[lo:lo + chunk])
        return out

    def _score(self, counts: torch.Tensor, width: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """KL(P‖Q) for each candidate edge in ``edges (E,)`` of one channel's ``counts (n,)``.

        ``Σ p log p`` comes from prefix sums of ``c log c`` (P is the counts up to the edge, the
        edge bin holding the clipped mass too), and ``Σ p log q`` from per-level sums, since q is
        constant over a level's non-empty bins: logarithms of levels, not of every bin.
        """
        n = counts.shape[0]
        total = counts.sum()
        k = torch.arange(n, device=counts.device)
        inside = k.unsqueeze(0) < edges.unsqueeze(1)  # (E, n)
        kept = torch.where(inside, counts.unsqueeze(0), torch.zeros((), dtype=counts.dtype))
        tail = counts.flip(0).cumsum(0).flip(0)  # tail[j] = mass in bins j..n-1
        edge_bin = kept.gather(1, (edges - 1).unsqueeze(1)).squeeze(1) + \
            torch.where(edges < n, tail[edges.clamp(max=n - 1)], torch.zeros((), dtype=counts.dtype))
        clog = torch.cat([counts.new_zeros(1), torch.xlogy(counts, counts).cumsum(0)])
        p_log_p = (clog[edges - 1] + torch.xlogy(edge_bin, edge_bin)) / total - torch.log(total)
        p = kept.clone()
        p[torch.arange(len(edges)), edges - 1] = edge_bin
        threshold = edges.double() * width
        scale, zero = self.grid.scale_zero(-threshold, threshold, torch.float64)
        centers = ((k.double() + 0.5) * width).expand(len(edges), n)
        level = self.grid.fake_quant(centers, scale, zero)
        # Rounding is monotonic in x, so a level's bins are one contiguous run: number the runs.
        group = torch.zeros_like(level, dtype=torch.long)
        group[:, 1:] = (level[:, 1:] != level[:, :-1]).long().cumsum(1)
        group = torch.where(inside, group, group.new_zeros(()))  # masked bins carry nothing anyway
        g = int(group.max()) + 1
        mass = torch.zeros(len(edges), g, dtype=counts.dtype, device=counts.device).scatter_add_(1, group, kept)
        p_mass = torch.zeros_like(mass).scatter_add_(1, group, p)
        members = torch.zeros_like(mass).scatter_add_(1, group, (p > 0).double())
        q = mass / members.clamp_min(1) / kept.sum(1, keepdim=True)  # normalised q of each level's bins
        p_log_q = (torch.xlogy(p_mass, q.clamp_min(EPS)) * (p_mass > 0)).sum(1) / total
        return p_log_p - p_log_q

    def range(self):
        div = self.divergences()
        edges = torch.tensor(list(self.candidates()), dtype=torch.float64)
        best = edges[div.argmin(0)]
        amax = torch.minimum(best * self.hist.width, torch.maximum(-self.hist.lo, self.hist.hi).double())
        return (-amax).float(), amax.float()
