from .presets import load_preset, preset_names
from .recipe import Recipe, matches

__all__ = ["Recipe", "load_preset", "matches", "preset_names"]
