"""Named recipes shipped with lowbit (YAML files in ``presets/``)."""
from __future__ import annotations

from importlib import resources

from ..errors import InputError
from .recipe import Recipe


def preset_names() -> list[str]:
    files = resources.files(__package__).joinpath("presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> Recipe:
    if name not in preset_names():
        raise InputError(f"unknown preset {name!r} (available: {', '.join(preset_names())})")
    path = resources.files(__package__).joinpath("presets", f"{name}.yaml")
    with resources.as_file(path) as p:
        return Recipe.from_yaml(p)
