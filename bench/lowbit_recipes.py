"""The lowbit rows of the quality benchmark: a name per row and the Recipe that makes it.

The preset rows are lowbit's defaults. Each RTN setting also appears with the clipping search
switched the other way (``-clip`` / ``-noclip``), so the table shows what the search does.
"""
from __future__ import annotations

from dataclasses import dataclass

from lowbit.algorithms.rotation import RotationConfig
from lowbit.recipes import Recipe, load_preset
from lowbit.recipes.build import build_recipe


@dataclass(frozen=True)
class BenchRecipe:
    name: str
    preset: str
    clip: bool | None = None  # None: the preset's own choice
    observer: str | None = None  # static activation recipes: None keeps the preset's observer
    sym: bool | None = None  # None: the preset's own choice
    calibration_dtype: str | None = None  # None: the walk's default ("auto")
    alpha: float | None = None  # SmoothQuant steps: None keeps the preset's alpha
    rotate: bool = False  # prepend a rotate step (R1 + R2, algorithms/rotation.py) to the preset
    rounder_from: str | None = None  # replace the preset's rounder (its last step) by this preset's
    keep_float: tuple[str, ...] = ()  # more ignore patterns: layers left in float (probes)
    transforms: tuple[dict, ...] | None = None  # replace the preset's transform steps (recipe dicts)

    def pipeline_options(self) -> dict:
        return {} if self.calibration_dtype is None else {"calibration_dtype": self.calibration_dtype}

    def recipe(self) -> Recipe:
        if self.transforms is not None:
            d = load_preset(self.preset).to_dict()
            return Recipe.from_dict({**d, "name": self.name, "steps": [*self.transforms, d["steps"][-1]]})
        if self.alpha is not None:
            d = load_preset(self.preset).to_dict()
            for step in d["steps"]:
                if step["method"] == "smoothquant":
                    step["alpha"] = self.alpha
            return Recipe.from_dict({**d, "name": self.name})
        if self.clip is None and self.observer is None and self.sym is None \
                and not self.rotate and self.rounder_from is None and not self.keep_float:
            return load_preset(self.preset)
        r = build_recipe(preset=self.preset, clip=self.clip, observer=self.observer, sym=self.sym)
        steps = (RotationConfig(), *r.steps) if self.rotate else r.steps
        if self.rounder_from is not None:
            steps = (*steps[:-1], load_preset(self.rounder_from).steps[-1])
        return Recipe(r.format, steps, (*r.ignore, *self.keep_float), r.overrides, self.name, r.activations)


LOWBIT_RECIPES: list[BenchRecipe] = [
    BenchRecipe("w4a16-rtn", "w4a16-rtn"),
    BenchRecipe("w4a16-rtn-sym", "w4a16-rtn-sym"),
    BenchRecipe("w3a16-rtn", "w3a16-rtn"),
    BenchRecipe("w8a16-rtn", "w8a16-rtn"),
    BenchRecipe("w4a16-rtn-clip", "w4a16-rtn", clip=True),
    BenchRecipe("w4a16-rtn-sym-noclip", "w4a16-rtn-sym", clip=False),
    BenchRecipe("w3a16-rtn-clip", "w3a16-rtn", clip=True),
    BenchRecipe("w8a16-rtn-noclip", "w8a16-rtn", clip=False),
    # Lookup-table formats (issue 9): NF4 / FP4 E2M1, block 64, with and without double quant.
    BenchRecipe("nf4", "nf4"),
    BenchRecipe("nf4-dq", "nf4-dq"),
    BenchRecipe("fp4", "fp4"),
    BenchRecipe("fp4-dq", "fp4-dq"),
    BenchRecipe("nf4-clip", "nf4", clip=True),  # absmax-ratio search per block
    BenchRecipe("nf4-dq-clip", "nf4-dq", clip=True),
]
# GPTQ (issue 4): W4 and W3 group 64, asym (the presets) and sym; calibrated on pydoc-128x512.
LOWBIT_RECIPES += [
    BenchRecipe("w4a16-gptq", "w4a16-gptq"),
    BenchRecipe("w3a16-gptq", "w3a16-gptq"),
    BenchRecipe("w4a16-gptq-sym", "w4a16-gptq", sym=True),
    BenchRecipe("w3a16-gptq-sym", "w3a16-gptq", sym=True),
    # The walk's forwards in float32 instead of the default's bfloat16 (on CPUs with native
    # bfloat16; pipeline/compute_dtype.py): same rounding, 4x slower matmuls.
    BenchRecipe("w4a16-gptq-f32calib", "w4a16-gptq", calibration_dtype="float32"),
    BenchRecipe("w3a16-gptq-f32calib", "w3a16-gptq", calibration_dtype="float32"),
]
# AWQ (issue 5): AWQ + RTN, and AWQ + GPTQ at 4 and 3 bits; calibrated on pydoc-128x512.
LOWBIT_RECIPES += [
    BenchRecipe("w4a16-awq", "w4a16-awq"),
    BenchRecipe("w4a16-awq-gptq", "w4a16-awq-gptq"),
    BenchRecipe("w3a16-awq-gptq", "w3a16-awq-gptq"),
]
# NF4 + double quantization with calibrated rounders (issue 9): GPTQ to the NF4 levels, AWQ + RTN,
# AWQ + GPTQ.
LOWBIT_RECIPES += [
    BenchRecipe("nf4-dq-gptq", "nf4-dq-gptq"),
    BenchRecipe("nf4-dq-awq", "nf4-dq-awq"),
    BenchRecipe("nf4-dq-awq-gptq", "nf4-dq-awq-gptq"),
]
# Weight + activation quantization (issue 8): W8A8 int8 (dynamic per-token; SmoothQuant; static
# per-tensor with each observer), LLM.int8(), FP8 E4M3 (dynamic, static); calibrated ones on
# pydoc-128x512.
LOWBIT_RECIPES += [
    BenchRecipe("w8a8-int8", "w8a8-int8"),
    BenchRecipe("w8a8-smoothquant", "w8a8-smoothquant"),
    *(BenchRecipe(f"w8a8-int8-static-{o}", "w8a8-int8-static", observer=o)
      for o in ("minmax", "moving_average", "percentile", "mse", "kl")),
    *(BenchRecipe(f"w8a8-smoothquant-static-{o}", "w8a8-smoothquant-static", observer=o)
      for o in ("minmax", "moving_average", "percentile", "mse", "kl")),
    BenchRecipe("llm-int8", "llm-int8"),
    BenchRecipe("w8a8-fp8", "w8a8-fp8"),
    BenchRecipe("w8a8-fp8-gptq", "w8a8-fp8-gptq"),
    BenchRecipe("w8a8-fp8-static", "w8a8-fp8-static"),
    # SmoothQuant on the norm-fed inputs folded first (alpha 0.7 before LLM.int8(), 0.5 before
    # FP8), then LLM.int8() / FP8 as above.
    BenchRecipe("llm-int8-smoothquant", "llm-int8-smoothquant"),
    # the alpha that the held-out pydoc-last24 windows pick (the preset's 0.7 was picked on the
    # first 12 lee-512 windows), to see whether the bar holds without that choice
    BenchRecipe("llm-int8-smoothquant-a085", "llm-int8-smoothquant", alpha=0.85),
    BenchRecipe("w8a8-fp8-smoothquant", "w8a8-fp8-smoothquant"),
]
# Offline rotation (R1 + R2) first (docs/W8A8.md, "Rotation"): static int8 with each observer,
# with and without SmoothQuant after it; FP8 dynamic; W4 RTN g64 weight-only (against w4a16-rtn).
LOWBIT_RECIPES += [
    *(BenchRecipe(f"w8a8-rotated-static-{o}", "w8a8-int8-static", observer=o, rotate=True)
      for o in ("minmax", "moving_average", "percentile", "mse", "kl")),
    *(BenchRecipe(f"w8a8-rotated-smoothquant-static-{o}", "w8a8-rotated-smoothquant-static", observer=o)
      for o in ("minmax", "moving_average", "percentile", "mse", "kl")),
    BenchRecipe("w8a8-fp8-rotated", "w8a8-fp8", rotate=True),
    # g64 (the preset's): SmolLM2's 576-wide inputs take no group of 128
    BenchRecipe("w4a16-rtn-rotated", "w4a16-rtn", rotate=True),
    # GPTQ (damp 0.1, as w8a8-fp8-gptq) instead of RTN after rotation + SmoothQuant, and the
    # w4a16-gptq preset after rotation (QuaRot's pairing: GPTQ rounds against the rotated inputs)
    *(BenchRecipe(f"w8a8-rotated-smoothquant-static-gptq-{o}", "w8a8-rotated-smoothquant-static", observer=o,
                  rounder_from="w8a8-fp8-gptq") for o in ("moving_average", "mse")),
    BenchRecipe("w4a16-gptq-rotated", "w4a16-gptq", rotate=True),
    # an online Hadamard rotation of down_proj's inputs (R4) after rotation + SmoothQuant
    *(BenchRecipe(f"w8a8-rotated-hadamard-static-{o}", "w8a8-rotated-hadamard-static", observer=o)
      for o in ("minmax", "moving_average", "percentile", "mse", "kl")),
    # R4 before FP8 dynamic (no offline rotation, which hurts FP8's weights) and before dynamic int8
    BenchRecipe("w8a8-fp8-hadamard", "w8a8-fp8", transforms=({"method": "online_hadamard"},)),
    BenchRecipe("w8a8-fp8-smoothquant-lf-hadamard", "w8a8-fp8-smoothquant",
                transforms=({"method": "smoothquant", "alpha": 0.5, "linear_feeders": True},
                            {"method": "online_hadamard"})),
    BenchRecipe("w8a8-smoothquant-lf-hadamard", "w8a8-smoothquant",
                transforms=({"method": "smoothquant", "alpha": 0.5, "linear_feeders": True},
                            {"method": "online_hadamard"})),
    # the static preset's transforms (rotation, SmoothQuant on linear feeders too, R4) before
    # dynamic per-token int8 (first measured as a row with these transforms in front of
    # w8a8-smoothquant's rounder, the same recipe)
    BenchRecipe("w8a8-rotated-hadamard", "w8a8-rotated-hadamard"),
    # what perfect down_proj inputs would leave: the preset with every down_proj in float
    BenchRecipe("w8a8-rotated-smoothquant-static-mse-down-float", "w8a8-rotated-smoothquant-static",
                keep_float=("mlp.down_proj",)),
]
BY_NAME = {r.name: r for r in LOWBIT_RECIPES}


def row_setting(r: BenchRecipe) -> dict:
    """The schema fields that describe the setting (not the measurements)."""
    recipe = r.recipe()
    f = recipe.format
    method = recipe.method
    acts = recipe.activations.label if recipe.activations is not None else "a16"
    if recipe.activations is not None:  # W8A8 rows: LLM.int8 and FP8 are named by their kind
        method = {"llm-int8": "llm-int8", "fp8": "fp8"}.get(recipe.activations.kind, method)
    elif f.is_lookup:  # the format is the method's name in the schema: nf4, nf4-dq, fp4, gptq+nf4...
        table = f"{f.kind}{f.bits}" + ("-dq" if f.double_quant else "")
        method = table if method == "rtn" else f"{method}+{table}"
    return {"tool": "lowbit", "recipe": r.name, "method": method, "bits": f.bits,
            "group_size": f.group_size, "sym": f.sym, "acts": acts, "kv_cache": None,
            "seqlen": 512}
