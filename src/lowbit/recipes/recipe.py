"""Recipes: an ordered list of steps, a default format, per-layer overrides and ignores.

Plain data that round-trips through JSON/YAML; the CLI reads the same files the checkpoint's
``quantization_config`` records. Module patterns are globs on full module names
(``model.layers.*.mlp.down_proj``), dotted suffixes of them (``mlp.down_proj``), or regexes
prefixed with ``re:`` that must match the whole name. The first matching override wins.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..algorithms.registry import rounder_for
from ..errors import InputError
from ..formats import FormatSpec


def matches(name: str, pattern: str) -> bool:
    """``re:<regex>`` must match the whole name; otherwise ``pattern`` is a glob on the full
    name, or a dotted suffix of it (``lm_head`` and ``mlp.down_proj`` match in any block)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or name.endswith("." + pattern) or name == pattern


@dataclass(frozen=True)
class Recipe:
    format: FormatSpec
    steps: tuple = ()
    ignore: tuple[str, ...] = ("lm_head",)
    overrides: tuple[tuple[str, FormatSpec], ...] = ()
    name: str = "custom"

    def __post_init__(self):
        if not self.steps:
            raise InputError("a recipe needs at least one step")

    @property
    def method(self) -> str:
        return "+".join(s.to_dict()["method"] for s in self.steps)

    @property
    def rounder(self):
        """The last step picks the integers; earlier steps transform the float model."""
        return self.steps[-1]

    @property
    def needs_calibration(self) -> bool:
        return any(rounder_for(s.to_dict()["method"]).needs_calibration for s in self.steps)

    def is_ignored(self, name: str) -> bool:
        return any(matches(name, p) for p in self.ignore)

    def format_for(self, name: str) -> FormatSpec:
        for pattern, spec in self.overrides:
            if matches(name, pattern):
                return spec
        return self.format

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "format": self.format.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "ignore": list(self.ignore),
            "overrides": [{"pattern": p, "format": s.to_dict()} for p, s in self.overrides],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build from plain data; any unknown field or malformed entry is an :class:`InputError`."""
        if not isinstance(d, dict):
            raise InputError(f"a recipe must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"name", "format", "steps", "ignore", "overrides"}
        if unknown:
            raise InputError(f"recipe: unknown fields {sorted(unknown)} "
                             f"(known: format, steps, ignore, overrides, name)")
        fmt = FormatSpec.from_dict(_mapping(d.get("format", {}), "format"))
        steps = tuple(_step(s, i) for i, s in enumerate(_sequence(d.get("steps", []), "steps")))
        overrides = []
        for o in _sequence(d.get("overrides", []), "overrides"):
            o = _mapping(o, "override")
            if set(o) - {"pattern", "format"} or "pattern" not in o:
                raise InputError(f"recipe override {o}: needs 'pattern' and 'format' (nothing else)")
            merged = {**fmt.to_dict(), **_mapping(o.get("format", {}), "override format")}
            overrides.append((str(o["pattern"]), FormatSpec.from_dict(merged)))
        ignore = d.get("ignore", ("lm_head",))
        ignore = (ignore,) if isinstance(ignore, str) else tuple(_sequence(ignore, "ignore"))
        return cls(format=fmt, steps=steps, ignore=ignore, overrides=tuple(overrides),
                   name=str(d.get("name", "custom")))

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a recipe file must hold a mapping")
        try:
            return cls.from_dict(data)
        except InputError as e:
            raise type(e)(f"{path}: {e}") from None


def _mapping(x, what: str) -> dict:
    if not isinstance(x, dict):
        raise InputError(f"recipe {what} must be a mapping, got {x!r}")
    return x


def _sequence(x, what: str) -> list:
    if not isinstance(x, (list, tuple)):
        raise InputError(f"recipe {what} must be a list, got {x!r}")
    return list(x)


def _step(s, i: int):
    """One step's config, through the rounder registry (no method names checked here)."""
    s = _mapping(s, f"step {i}")
    if "method" not in s:
        raise InputError(f"recipe step {i} has no 'method': {s}")
    try:
        return rounder_for(s["method"]).config_type.from_dict(s)
    except InputError:
        raise
    except (ValueError, TypeError) as e:  # step configs of other rounders may raise these
        raise InputError(f"recipe step {i} ({s['method']}): {e}") from None


__all__ = ["Recipe", "matches"]
