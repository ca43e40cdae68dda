"""Rounders keyed by method name: the step config type and the pure function that applies it.

A rounder is ``fn(W (out, in), spec, config, stats_in) -> QuantizedWeight``; ``stats_in`` is what
the pipeline collected for that layer (None for calibration-free rounders). Adding a method is
one ``register_rounder`` call: no mode strings are checked anywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

ROUNDERS: dict[str, "RounderEntry"] = {}


@dataclass(frozen=True)
class RounderEntry:
    method: str
    config_type: type
    fn: Callable[..., Any]
    needs_calibration: bool = False


def register_rounder(method: str, config_type: type, needs_calibration: bool = False):
    def wrap(fn):
        ROUNDERS[method] = RounderEntry(method, config_type, fn, needs_calibration)
        return fn
    return wrap


def rounder_for(method: str) -> RounderEntry:
    _load_builtin()
    if method not in ROUNDERS:
        raise ValueError(f"unknown method {method!r} (available: {', '.join(sorted(ROUNDERS))})")
    return ROUNDERS[method]


def _load_builtin() -> None:
    from . import rtn_step  # noqa: F401  (registers "rtn")
    from . import gptq_step  # noqa: F401  (registers "gptq")
