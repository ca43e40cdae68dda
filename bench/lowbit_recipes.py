"""The lowbit rows of the quality benchmark: a name per row and the Recipe that makes it.

The preset rows are lowbit's defaults. Each RTN setting also appears with the clipping search
switched the other way (``-clip`` / ``-noclip``), so the table shows what the search does.
"""
from __future__ import annotations

from dataclasses import dataclass

from lowbit.recipes import Recipe, load_preset
from lowbit.recipes.build import build_recipe


@dataclass(frozen=True)
class BenchRecipe:
    name: str
    preset: str
    clip: bool | None = None  # None: the preset's own choice

    def recipe(self) -> Recipe:
        if self.clip is None:
            return load_preset(self.preset)
        r = build_recipe(preset=self.preset, clip=self.clip)
        return Recipe(r.format, r.steps, r.ignore, r.overrides, self.name)


LOWBIT_RECIPES: list[BenchRecipe] = [
    BenchRecipe("w4a16-rtn", "w4a16-rtn"),
    BenchRecipe("w4a16-rtn-sym", "w4a16-rtn-sym"),
    BenchRecipe("w3a16-rtn", "w3a16-rtn"),
    BenchRecipe("w8a16-rtn", "w8a16-rtn"),
    BenchRecipe("w4a16-rtn-clip", "w4a16-rtn", clip=True),
    BenchRecipe("w4a16-rtn-sym-noclip", "w4a16-rtn-sym", clip=False),
    BenchRecipe("w3a16-rtn-clip", "w3a16-rtn", clip=True),
    BenchRecipe("w8a16-rtn-noclip", "w8a16-rtn", clip=False),
]
BY_NAME = {r.name: r for r in LOWBIT_RECIPES}


def row_setting(r: BenchRecipe) -> dict:
    """The schema fields that describe the setting (not the measurements)."""
    recipe = r.recipe()
    f = recipe.format
    return {"tool": "lowbit", "recipe": r.name, "method": recipe.method, "bits": f.bits,
            "group_size": f.group_size, "sym": f.sym, "acts": "a16", "kv_cache": None,
            "seqlen": 512}
