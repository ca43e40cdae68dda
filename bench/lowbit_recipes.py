"""The lowbit rows of the quality benchmark: a name per row and the Recipe that makes it.

RTN rows come twice: with lowbit's default clipping search (the presets) and as ``rtn-noclip``
(plain min-max ranges, what llm-compressor's RTN does), so that the table shows how much of any
difference to the peer is the clipping search and how much is everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

from lowbit.recipes import Recipe, load_preset
from lowbit.recipes.build import build_recipe


@dataclass(frozen=True)
class BenchRecipe:
    name: str
    preset: str
    clip: bool = True

    def recipe(self) -> Recipe:
        if self.clip:
            return load_preset(self.preset)
        r = build_recipe(preset=self.preset, clip=False)
        return Recipe(r.format, r.steps, r.ignore, r.overrides, self.name)


LOWBIT_RECIPES: list[BenchRecipe] = [
    BenchRecipe("w4a16-rtn", "w4a16-rtn"),
    BenchRecipe("w4a16-rtn-sym", "w4a16-rtn-sym"),
    BenchRecipe("w3a16-rtn", "w3a16-rtn"),
    BenchRecipe("w8a16-rtn", "w8a16-rtn"),
    BenchRecipe("w4a16-rtn-noclip", "w4a16-rtn", clip=False),
    BenchRecipe("w4a16-rtn-noclip-sym", "w4a16-rtn-sym", clip=False),
    BenchRecipe("w3a16-rtn-noclip", "w3a16-rtn", clip=False),
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
