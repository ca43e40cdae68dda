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

from ..algorithms.registry import is_transform, is_whole_model_transform, step_for
from ..errors import InputError
from ..formats import FormatSpec
from ..formats.activations import ActivationSpec


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
    # None: weight-only. Otherwise inputs are quantized too (W8A8, LLM.int8, FP8), and every
    # weight format must be the one the activation kind's module runs.
    activations: ActivationSpec | None = None

    def __post_init__(self):
        if not self.steps:
            raise InputError("a recipe needs at least one step")
        if self.activations is not None:
            wanted = self.activations.weight_format
            for spec in (self.format, *(s for _, s in self.overrides)):
                if spec != wanted:
                    raise InputError(f"{self.activations.kind} activations run with {wanted.label()} "
                                     f"weights, not {spec.label()}")
        methods = [s.to_dict()["method"] for s in self.steps]
        # Transforms change the float model, the last step picks the integers: a recipe is
        # transforms, then exactly one rounder.
        if is_transform(methods[-1]) or any(not is_transform(m) for m in methods[:-1]):
            raise InputError(f"recipe steps {methods}: transforms (e.g. awq) come first and the "
                             f"last step, only it, is a rounder (e.g. rtn, gptq)")
        whole = [is_whole_model_transform(m) for m in methods]
        # A whole-model transform (rotate) changes every block and the embeddings: block-level
        # transforms computed before it would be undone, so it runs first.
        if any(w and not prev for prev, w in zip(whole, whole[1:])):
            raise InputError(f"recipe steps {methods}: whole-model transforms (rotate) come before "
                             f"every other step")
        # An online rotation makes the layer's input channels mixtures of the feeder's: a later
        # per-channel transform (SmoothQuant, AWQ) would fold its scales into the wrong channels.
        if "online_hadamard" in methods[:-2]:
            raise InputError(f"recipe steps {methods}: online_hadamard must be the last transform "
                             f"(right before the rounder)")

    @property
    def method(self) -> str:
        return "+".join(s.to_dict()["method"] for s in self.steps)

    @property
    def rounder(self):
        """The last step picks the integers; earlier steps transform the float model."""
        return self.steps[-1]

    @property
    def model_transforms(self) -> tuple:
        """The whole-model transforms (rotate), applied once before everything else."""
        return tuple(s for s in self.steps[:-1] if is_whole_model_transform(s.to_dict()["method"]))

    @property
    def block_transforms(self) -> tuple:
        """The transforms the calibration walk applies block by block (AWQ, SmoothQuant)."""
        return tuple(s for s in self.steps[:-1] if not is_whole_model_transform(s.to_dict()["method"]))

    @property
    def needs_calibration(self) -> bool:
        return self.steps_need_calibration or (self.activations is not None
                                               and self.activations.needs_calibration)

    @property
    def steps_need_calibration(self) -> bool:
        """The weights' steps need calibration (static activation scales aside)."""
        return any(step_for(s.to_dict()["method"]).needs_calibration for s in self.steps)

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
            # weight-only recipes (and their checkpoints) read exactly as before
            **({"activations": self.activations.to_dict()} if self.activations is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build from plain data; any unknown field or malformed entry is an :class:`InputError`."""
        if not isinstance(d, dict):
            raise InputError(f"a recipe must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"name", "format", "steps", "ignore", "overrides", "activations"}
        if unknown:
            raise InputError(f"recipe: unknown fields {sorted(unknown)} "
                             f"(known: format, steps, ignore, overrides, name, activations)")
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
        acts = d.get("activations")
        acts = None if acts is None else ActivationSpec.from_dict(_mapping(acts, "activations"))
        return cls(format=fmt, steps=steps, ignore=ignore, overrides=tuple(overrides),
                   name=str(d.get("name", "custom")), activations=acts)

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
    """One step's config, through the step registry (no method names checked here)."""
    s = _mapping(s, f"step {i}")
    if "method" not in s:
        raise InputError(f"recipe step {i} has no 'method': {s}")
    try:
        return step_for(s["method"]).config_type.from_dict(s)
    except InputError:
        raise
    except (ValueError, TypeError) as e:  # step configs of other rounders may raise these
        raise InputError(f"recipe step {i} ({s['method']}): {e}") from None


__all__ = ["Recipe", "matches"]
