"""Observers: turn seen values into a range, then a scale (and zero) for a grid.

``make_observer("kl", "int8")`` builds one by name; names are what recipes and ``--observer``
accept. Every observer: ``observe(x)`` any number of times, then ``range()`` / ``qparams()``.
"""
from __future__ import annotations

from ..errors import InputError
from .base import Observer, by_channel
from .grid import FP8Grid, IntGrid, grid_for
from .kl import KLObserver
from .minmax import MinMaxObserver
from .moving_average import MovingAverageMinMaxObserver
from .mse import MSEObserver
from .percentile import PercentileObserver

OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}


def make_observer(name: str, target="int8", axis: int | None = None, **options) -> Observer:
    if name not in OBSERVERS:
        raise InputError(f"unknown observer {name!r} (available: {', '.join(OBSERVERS)})")
    try:
        return OBSERVERS[name](target, axis, **options)
    except TypeError as e:
        raise InputError(f"observer {name}: {e}") from None


__all__ = ["OBSERVERS", "FP8Grid", "IntGrid", "KLObserver", "MSEObserver", "MinMaxObserver",
           "MovingAverageMinMaxObserver", "Observer", "PercentileObserver", "by_channel", "grid_for",
           "make_observer"]
