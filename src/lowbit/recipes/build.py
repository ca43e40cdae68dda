"""Build a Recipe from what a user asked for: a preset, a recipe file, or method + format flags."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..algorithms.registry import is_transform, step_for
from ..errors import InputError
from ..formats import FormatSpec
from .presets import load_preset, preset_names
from .recipe import Recipe


DEFAULT_METHOD = "gptq"


def build_recipe(
    preset: str | None = None, recipe_file: str | None = None, method: str | None = None,
    bits: int | None = None, group_size: int | None = None, sym: bool | None = None,
    clip: bool | None = None, ignore: tuple[str, ...] | None = None, observer: str | None = None,
) -> Recipe:
    """Start from a preset or file (or the method's defaults) and apply explicit overrides.

    ``observer`` replaces the observer of a recipe with static activation scales."""
    if preset and recipe_file:
        raise InputError("give either --preset or --recipe, not both")
    try:
        if recipe_file:
            if not Path(recipe_file).is_file():
                raise InputError(f"recipe file not found: {recipe_file}")
            base = Recipe.from_yaml(recipe_file)
        elif preset:
            base = load_preset(preset)
        else:
            # No preset, file or method: GPTQ W4 g64 (issue 4; it beats RTN on lee-512, see
            # docs/GPTQ-DOMAIN.md), calibrated on --calib. The preset of the asked width is the
            # base where there is one: its settings (GPTQ's dampening) were chosen for that width.
            method = method or DEFAULT_METHOD
            name = f"w{bits or 4}a16-{method}"
            base = load_preset(name) if name in preset_names() else load_preset(f"w4a16-{method}") \
                if f"w4a16-{method}" in preset_names() else Recipe(FormatSpec(), _steps_for(method), name=method)
        if method and [s.to_dict()["method"] for s in base.steps] != _step_methods(method):
            base = Recipe(base.format, _steps_for(method), base.ignore, base.overrides,
                          activations=base.activations)
        fmt = base.format.to_dict()
        for key, value in (("bits", bits), ("group_size", group_size), ("sym", sym)):
            if value is not None:
                fmt[key] = value
        steps = base.steps
        if clip is not None:
            d = base.rounder.to_dict()
            if "clip" not in d:
                raise InputError(f"method {d['method']!r} has no clipping search option")
            d["clip"] = d["clip"] or {} if clip else None
            steps = (*steps[:-1], type(base.rounder).from_dict(d))
        acts = base.activations
        if observer is not None:
            if acts is None or acts.dynamic:
                raise InputError(f"--observer sets the static input scales of a recipe like "
                                 f"w8a8-int8-static; {base.name!r} has none")
            acts = dataclasses.replace(acts, observer=observer)
        fmt_spec = FormatSpec.from_dict(fmt)
        changed = fmt_spec != base.format or steps != base.steps or ignore is not None
        name = _name(fmt_spec, steps, acts) if changed else base.name
        if acts != base.activations and not changed:
            name = f"{base.name}-{acts.observer}"
        return Recipe(fmt_spec, steps, tuple(ignore) if ignore is not None else base.ignore,
                      base.overrides, name, acts)
    except InputError:
        raise
    except (ValueError, TypeError) as e:
        raise InputError(str(e)) from None


def _step_methods(method: str) -> list[str]:
    """``--method`` names the steps joined by ``-`` or ``+`` (``awq-gptq``); a method that ends
    with a transform is rounded to nearest (``awq`` is AWQ + RTN, as in the paper)."""
    methods = method.replace("+", "-").split("-")
    for m in methods:
        step_for(m)  # unknown names fail here, listing the known ones
    return methods + ["rtn"] if is_transform(methods[-1]) else methods


def _steps_for(method: str) -> tuple:
    steps = [step_for(m).config_type() for m in _step_methods(method)]
    if len(steps) > 1 and "clip" in steps[-1].to_dict():
        # The transforms (AWQ) chose each block's range by output error already: the rounder
        # keeps it (plain min-max of the clipped weights) instead of searching it by weight error.
        steps[-1] = type(steps[-1]).from_dict({"clip": None})
    return tuple(steps)


def _name(fmt: FormatSpec, steps: tuple, acts=None) -> str:
    method = "+".join(s.to_dict()["method"] for s in steps)
    g = f"g{fmt.group_size}" if fmt.group_size > 0 else ("pc" if fmt.group_size == -1 else "pt")
    a = "a16" if acts is None else f"a8-{acts.kind}-{'dynamic' if acts.dynamic else 'static'}"
    return f"w{fmt.bits}{a}-{method}-{g}-{'sym' if fmt.sym else 'asym'}"
