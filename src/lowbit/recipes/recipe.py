"""Recipes: an ordered list of steps, a default format, per-layer overrides and ignores.

Plain data that round-trips through JSON/YAML; the CLI reads the same files the checkpoint's
``quantization_config`` records. Module patterns are globs on full module names
(``model.layers.*.mlp.down_proj``) or regexes prefixed with ``re:``.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..algorithms.registry import rounder_for
from ..formats import FormatSpec


def matches(name: str, pattern: str) -> bool:
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
            raise ValueError("a recipe needs at least one step")

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
        unknown = set(d) - {"name", "format", "steps", "ignore", "overrides"}
        if unknown:
            raise ValueError(f"recipe: unknown fields {sorted(unknown)}")
        fmt = FormatSpec.from_dict(d.get("format", {}))
        steps = []
        for s in d.get("steps", []):
            if "method" not in s:
                raise ValueError(f"recipe step without a method: {s}")
            steps.append(rounder_for(s["method"]).config_type.from_dict(s))
        overrides = tuple(
            (o["pattern"], FormatSpec.from_dict({**fmt.to_dict(), **o.get("format", {})}))
            for o in d.get("overrides", [])
        )
        return cls(format=fmt, steps=tuple(steps), ignore=tuple(d.get("ignore", ("lm_head",))),
                   overrides=overrides, name=d.get("name", "custom"))

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe file must hold a mapping")
        return cls.from_dict(data)


__all__ = ["Recipe", "matches"]
