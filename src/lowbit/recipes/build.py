"""Build a Recipe from what a user asked for: a preset, a recipe file, or method + format flags."""
from __future__ import annotations

from pathlib import Path

from ..algorithms.registry import rounder_for
from ..errors import InputError
from ..formats import FormatSpec
from .presets import load_preset, preset_names
from .recipe import Recipe


def build_recipe(
    preset: str | None = None, recipe_file: str | None = None, method: str | None = None,
    bits: int | None = None, group_size: int | None = None, sym: bool | None = None,
    clip: bool | None = None, ignore: tuple[str, ...] | None = None,
) -> Recipe:
    """Start from a preset or file (or the method's defaults) and apply explicit overrides."""
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
            base = load_preset(f"w4a16-{method or 'rtn'}") if f"w4a16-{method or 'rtn'}" in preset_names() \
                else Recipe(FormatSpec(), (rounder_for(method).config_type(),), name=method)
        if method and base.rounder.to_dict()["method"] != method:
            base = Recipe(base.format, (rounder_for(method).config_type(),), base.ignore, base.overrides)
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
        fmt_spec = FormatSpec.from_dict(fmt)
        changed = fmt_spec != base.format or steps != base.steps or ignore is not None
        name = _name(fmt_spec, steps) if changed else base.name
        return Recipe(fmt_spec, steps, tuple(ignore) if ignore is not None else base.ignore,
                      base.overrides, name)
    except InputError:
        raise
    except (ValueError, TypeError) as e:
        raise InputError(str(e)) from None


def _name(fmt: FormatSpec, steps: tuple) -> str:
    method = "+".join(s.to_dict()["method"] for s in steps)
    g = f"g{fmt.group_size}" if fmt.group_size > 0 else ("pc" if fmt.group_size == -1 else "pt")
    return f"w{fmt.bits}a16-{method}-{g}-{'sym' if fmt.sym else 'asym'}"
