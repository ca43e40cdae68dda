"""Rounders keyed by method name: the step config type and the pure function that applies it.

A rounder is ``fn(W (out, in), spec, config, stats_in) -> QuantizedWeight``; ``stats_in`` is what
the pipeline collected for that layer (None for calibration-free rounders). Adding a method is
one ``register_rounder`` call: no mode strings are checked anywhere else.

A rounder that ``takes_ranges`` also accepts ``range_weight=`` (same shape as W): its group
ranges are those of ``range_weight`` (an earlier step's clipped weights) while it rounds W
itself, so it can compensate the clipping error too (GPTQ); for any other rounder that step
clips W in place.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from ..errors import InputError

ROUNDERS: dict[str, "RounderEntry"] = {}


@dataclass(frozen=True)
class RounderEntry:
    method: str
    config_type: type
    fn: Callable[..., Any]
    needs_calibration: bool = False
    takes_ranges: bool = False


def register_rounder(method: str, config_type: type, needs_calibration: bool = False,
                     takes_ranges: bool = False):
    def wrap(fn):
        ROUNDERS[method] = RounderEntry(method, config_type, fn, needs_calibration, takes_ranges)
        return fn
    return wrap


def rounder_for(method: str) -> RounderEntry:
    _load_builtin()
    if method not in ROUNDERS:
        raise ValueError(f"unknown method {method!r} (available: {', '.join(sorted(ROUNDERS))})")
    return ROUNDERS[method]


# Transforms change the float model before a rounder rounds it (AWQ). They are recipe steps like
# rounders, keyed by method name; the block-level work is registered in ``pipeline/transforms.py``
# under the config type (algorithms know no models). A ``whole_model`` transform (rotation) changes
# the model once, before any block-level step, through the model-level handler registered there.
TRANSFORMS: dict[str, "TransformEntry"] = {}


@dataclass(frozen=True)
class TransformEntry:
    method: str
    config_type: type
    needs_calibration: bool = True
    whole_model: bool = False


def step_fields(cls: type, d: dict, method: str) -> dict:
    """A recipe step's fields for the dataclass ``cls``, without ``method``; fields ``cls`` does
    not have are a user error."""
    d = {k: v for k, v in d.items() if k != "method"}
    known = {f.name for f in fields(cls)}
    if set(d) - known:
        raise InputError(f"{method} step: unknown fields {sorted(set(d) - known)} (known: {sorted(known)})")
    return d


def register_transform(method: str, config_type: type, needs_calibration: bool = True,
                       whole_model: bool = False) -> None:
    TRANSFORMS[method] = TransformEntry(method, config_type, needs_calibration, whole_model)


def is_whole_model_transform(method: str) -> bool:
    _load_builtin()
    return method in TRANSFORMS and TRANSFORMS[method].whole_model


def is_transform(method: str) -> bool:
    _load_builtin()
    return method in TRANSFORMS


def step_for(method: str) -> "RounderEntry | TransformEntry":
    """The entry of any recipe step, rounder or transform."""
    _load_builtin()
    if method in TRANSFORMS:
        return TRANSFORMS[method]
    if method not in ROUNDERS:
        raise ValueError(f"unknown method {method!r} (available: "
                         f"{', '.join(sorted({*ROUNDERS, *TRANSFORMS}))})")
    return ROUNDERS[method]


def _load_builtin() -> None:
    from . import rtn_step  # noqa: F401  (registers "rtn")
    from . import gptq_step  # noqa: F401  (registers "gptq")
    from . import awq_step  # noqa: F401  (registers the "awq" transform)
    from . import smoothquant  # noqa: F401  (registers the "smoothquant" transform)
    from . import rotation  # noqa: F401  (registers the "rotate" whole-model transform)
    from . import online_hadamard  # noqa: F401  (registers the "online_hadamard" transform)
