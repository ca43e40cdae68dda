"""Observers against brute-force references on synthetic data with known outliers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.formats.integer import qparams_from_range
from lowbit.observers import (FP8Grid, IntGrid, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                              MSEObserver, PercentileObserver, make_observer)
from lowbit.observers.histogram import Histogram

OUTLIER = 80.0


def outlier_data(n: int = 6000, seed: int = 0) -> torch.Tensor:
    """``(n, 5)`` activations: channel scales 0.5..2, channel 2 holds 0.1% outliers at ±80,
    channel 4 is shifted (asymmetric), channel 3 a heavy tail (Laplace)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g) * torch.tensor([0.5, 1.0, 1.0, 1.5, 2.0])
    idx = torch.randperm(n, generator=g)[: n // 1000]
    x[idx, 2] = OUTLIER * torch.sign(torch.randn(len(idx), generator=g))
    u = torch.rand(n, generator=g) - 0.5
    x[:, 3] = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x[:, 4] += 1.5
    return x


def batches(x: torch.Tensor, n: int = 3) -> list[torch.Tensor]:
    """Batches shaped like activations ``(batch, seq, channels)``, the outliers in a late one."""
    return [c.reshape(1, -1, x.shape[1]) for c in x.chunk(n)]


def feed(obs, x, n=3):
    for b in batches(x, n):
        obs.observe(b)
    return obs


# ---------------------------------------------------------------- min-max and moving average

@pytest.mark.parametrize("axis", [None, -1])
def test_minmax_is_the_exact_range_and_its_qparams(axis):
    x = outlier_data()
    obs = feed(MinMaxObserver("int8", axis=axis), x)
    lo, hi = obs.range()
    ref_lo, ref_hi = (x.min().reshape(1), x.max().reshape(1)) if axis is None else (x.amin(0), x.amax(0))
    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi)
    scale, zero = obs.qparams()
    ref_scale, _ = qparams_from_range(ref_lo, ref_hi, FormatSpec(bits=8, sym=True, group_size=0), torch.float32)
    assert zero is None and torch.equal(scale, ref_scale)
    # the convention: ±amax half a step outside the grid (scale = amax / 127.5)
    assert torch.allclose(scale.double(), torch.maximum(-ref_lo, ref_hi).double() / 127.5, rtol=1e-6)


def test_minmax_per_output_row_of_a_weight_and_asymmetric_zero():
    w = outlier_data(400).t()  # (5, 400): axis 0 is the output row
    obs = MinMaxObserver(FormatSpec(bits=4, sym=False, group_size=-1), axis=0)
    obs.observe(w)
    scale, zero = obs.qparams()
    ref_scale, ref_zero = qparams_from_range(w.amin(1), w.amax(1), FormatSpec(bits=4, sym=False), torch.float32)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)


def test_moving_average_matches_the_recurrence():
    x = outlier_data()
    x[-1, 0] = OUTLIER  # channel 0: one outlier, in the last batch only
    c = 0.1
    obs = MovingAverageMinMaxObserver("int8", axis=-1, averaging_constant=c)
    lo = hi = None
    for b in batches(x, 5):
        obs.observe(b)
        blo, bhi = b.reshape(-1, 5).amin(0).double(), b.reshape(-1, 5).amax(0).double()
        lo, hi = (blo, bhi) if lo is None else (lo + c * (blo - lo), hi + c * (bhi - hi))
    olo, ohi = obs.range()
    assert torch.allclose(olo.double(), lo, rtol=1e-6) and torch.allclose(ohi.double(), hi, rtol=1e-6)
    # the outlier batch moves channel 0's range by a fraction c of its excess, not all of it
    assert ohi[0] < 0.15 * OUTLIER


# ---------------------------------------------------------------- the histogram

def test_histogram_counts_match_numpy_and_regrowing_is_exact():
    x = outlier_data()[:, 1:3]  # channel 2 holds the outliers: its radius grows by powers of two
    h = Histogram(bins=64)
    for b in x.chunk(4):
        h.add(b.t().contiguous())
    assert h.radius[1] >= OUTLIER and h.radius[1] < 2 * OUTLIER
    for c in range(2):
        r = float(h.radius[c])
        ref, _ = np.histogram(x[:, c].double().numpy(), bins=64, range=(-r, r))
        assert np.array_equal(h.counts[c].numpy(), ref.astype(np.float64)), c
    assert h.counts.sum().item() == x.numel()


# ---------------------------------------------------------------- percentile

@pytest.mark.parametrize("sym", [True, False])
def test_percentile_matches_the_exact_order_statistic(sym):
    x = outlier_data(20000)
    p = 99.0
    target = FormatSpec(bits=8, sym=sym, group_size=0)
    obs = feed(PercentileObserver(target, axis=-1, percentile=p, bins=4096), x)
    lo, hi = obs.range()
    width = obs.hist.width.float()
    if sym:
        ref = torch.quantile(x.abs().double(), p / 100, dim=0).float()
        assert torch.all((hi - ref).abs() <= width + 1e-6) and torch.equal(lo, -hi)
    else:
        ref_lo = torch.quantile(x.double(), 1 - p / 100, dim=0).float()
        ref_hi = torch.quantile(x.double(), p / 100, dim=0).float()
        assert torch.all((hi - ref_hi).abs() <= width + 1e-6)
        assert torch.all((lo - ref_lo).abs() <= width + 1e-6)
    # the known outliers (0.1% of channel 2) lie beyond the 99th percentile: clipped away
    assert hi[2] < 5


def test_percentile_default_keeps_the_tail_and_never_exceeds_the_range_seen():
    x = outlier_data(20000)
    obs = feed(PercentileObserver("int8"), x)  # 99.99, per tensor
    _, hi = obs.range()
    ref = torch.quantile(x.abs().reshape(-1).double(), 0.9999).float()
    assert abs(hi.item() - ref.item()) <= obs.hist.width.item() + 1e-6
    assert hi.item() <= x.abs().max().item()


# ---------------------------------------------------------------- MSE search

def brute_force_mse(x: torch.Tensor, grid, ratios) -> torch.Tensor:
    """Rounding error of each candidate range on the raw values ``x (C, n)``: ``(len(ratios), C)``."""
    lo, hi = x.amin(1).double(), x.amax(1).double()
    errs = []
    for r in ratios:
        scale, zero = grid.scale_zero(lo * r, hi * r, torch.float64)
        errs.append((grid.fake_quant(x.double(), scale, zero) - x.double()).pow(2).sum(1))
    return torch.stack(errs)


@pytest.mark.parametrize("target", [IntGrid(8, True), IntGrid(4, False), FP8Grid()], ids=["int8", "int4-asym", "fp8"])
def test_mse_choice_is_as_good_as_the_brute_force_best(target):
    x = outlier_data(8000)
    obs = feed(MSEObserver(target, axis=-1, grid=50, min_ratio=0.05), x)
    rows = x.t().contiguous()
    ratios = obs.ratios.tolist()
    exact = brute_force_mse(rows, obs.grid, ratios)
    chosen = obs.best_ratio()
    picked = exact.gather(0, torch.searchsorted(-obs.ratios, -chosen).unsqueeze(0)).squeeze(0)
    best = exact.min(0).values
    # the histogram (bin centres) estimates each candidate's error; its choice costs < 2% error
    assert torch.all(picked <= best * 1.02), (picked / best)
    # squared error: clipping the ±80 outliers would cost more than the bulk's rounding gains
    assert chosen[2] == 1.0
    if isinstance(target, IntGrid) and target.bits == 4:
        # at 4 bits the Gaussian and Laplace channels trade their tails for a finer grid
        assert torch.all(chosen[[0, 1, 3, 4]] < 0.8)


# ---------------------------------------------------------------- KL

def reference_kl_threshold(counts: list[float], width: float, min_bins: int, bits: int = 8) -> float:
    """TensorRT's entropy calibration, written out with plain loops (float64, no tensors)."""
    n = len(counts)
    qmax = (1 << bits) - 1
    mid = 1 << (bits - 1)
    best, best_i = math.inf, None
    for i in range(min_bins, n + 1):
        p = list(counts[:i])
        p[-1] += sum(counts[i:])
        t = i * width
        scale = max(2 * t / qmax, np.finfo(np.float16).tiny)
        levels = [(min(max(round((k + 0.5) * width / scale) + mid, 0), qmax) - mid) * scale for k in range(i)]
        q = [0.0] * i
        k = 0
        while k < i:  # runs of bins that round to one level
            j = k
            while j < i and levels[j] == levels[k]:
                j += 1
            nonzero = [m for m in range(k, j) if p[m] > 0]
            mass = sum(counts[k:j])
            for m in nonzero:
                q[m] = mass / len(nonzero)
            k = j
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for a, b in zip(p, q):
            if a > 0:
                kl += a / sp * math.log((a / sp) / max(b / sq if sq > 0 else 0.0, 1e-10))
        if kl < best:
            best, best_i = kl, i
    return best_i * width


def test_kl_threshold_matches_the_plain_loop_reference():
    x = outlier_data(6000)[:, 2:3]
    obs = KLObserver("int8", bins=512, min_bins=64)
    obs.observe(x)
    counts = obs.hist.magnitude_counts()[0].tolist()
    ref = reference_kl_threshold(counts, obs.hist.width.item(), 64)
    _, hi = obs.range()
    assert hi.item() == pytest.approx(ref, rel=1e-6)


def test_kl_clips_known_outliers_and_keeps_a_plain_gaussian():
    x = outlier_data(20000)
    kl = feed(KLObserver("int8", axis=-1, bins=2048), x)
    _, hi = kl.range()
    # channel 2: N(0, 1) with 0.1% at ±80; the threshold lands in the bulk's tail, far below 80
    assert 2.5 < hi[2] < 20
    # channel 1, a plain N(0, 1) without outliers: not clipped harder than ~3 sigma
    assert hi[1] > 3.0
    # per channel equals per tensor on that channel alone
    alone = feed(KLObserver("int8", bins=2048), x[:, 2:3].contiguous())
    assert alone.range()[1].item() == pytest.approx(hi[2].item(), rel=1e-6)


def test_kl_needs_a_symmetric_grid_and_observers_need_values():
    with pytest.raises(InputError, match="symmetric"):
        KLObserver(FormatSpec(bits=8, sym=False, group_size=0))
    with pytest.raises(InputError, match="no values"):
        MinMaxObserver().range()
    with pytest.raises(InputError, match="unknown observer"):
        make_observer("entropy2")
    obs = MinMaxObserver(axis=-1)
    obs.observe(torch.zeros(2, 3))
    with pytest.raises(InputError, match="channels"):
        obs.observe(torch.zeros(2, 4))


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse", "kl"])
def test_every_observer_by_name_gives_a_usable_per_tensor_scale(name):
    x = outlier_data(4000)
    obs = feed(make_observer(name, "int8"), x)
    scale, zero = obs.qparams()
    assert zero is None and scale.shape == (1,)
    amax = x.abs().max().item()
    # never beyond the full range; never so tight that 1% of the values are clipped
    bulk = torch.quantile(x.abs().reshape(-1), 0.99).item()
    assert bulk < scale.item() * 127.5 <= amax * (1 + 1e-6)
