"""Recipes are plain data: round trips, presets, pattern matching and strict validation."""
from __future__ import annotations

import json

import pytest
import yaml

from lowbit.algorithms.rtn import ClipSearch
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatError, FormatSpec
from lowbit.recipes import Recipe, load_preset, matches, preset_names

LAYER_NAMES = [f"model.layers.{i}.{p}" for i in (0, 7, 12) for p in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]


def sample_recipe() -> Recipe:
    return Recipe(
        format=FormatSpec(bits=4, sym=False, group_size=64),
        steps=(RTNConfig(clip=ClipSearch(grid=7, min_ratio=0.6)),),
        ignore=("lm_head", "re:model\\.layers\\.0\\..*"),
        overrides=(("model.layers.*.mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),
                   ("re:.*self_attn\\.[qk]_proj", FormatSpec(bits=3, sym=False, group_size=32))),
        name="mixed",
    )


def test_to_dict_from_dict_round_trip_including_json():
    r = sample_recipe()
    d = r.to_dict()
    assert d["name"] == "mixed" and d["steps"] == [
        {"method": "rtn", "clip": {"grid": 7, "min_ratio": 0.6, "norm": 2.0}}]
    assert Recipe.from_dict(d) == r
    assert Recipe.from_dict(json.loads(json.dumps(d))) == r


def test_yaml_round_trip(tmp_path):
    r = sample_recipe()
    path = tmp_path / "recipe.yaml"
    r.save_yaml(path)
    assert yaml.safe_load(path.read_text()) == r.to_dict()
    assert Recipe.from_yaml(path) == r


def test_minimal_recipe_fills_defaults():
    r = Recipe.from_dict({"steps": [{"method": "rtn"}]})
    assert r.format == FormatSpec() and r.ignore == ("lm_head",) and r.overrides == ()
    assert r.steps == (RTNConfig(),) and r.name == "custom" and r.method == "rtn"
    assert not r.needs_calibration
    assert Recipe.from_dict({"steps": [{"method": "rtn", "clip": None}]}).rounder == RTNConfig(clip=None)
    assert Recipe.from_dict({"steps": [{"method": "rtn"}], "ignore": "lm_head"}).ignore == ("lm_head",)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name):
    r = load_preset(name)
    assert r.name == name
    assert r.format.bits in (2, 3, 4, 8)
    if r.activations is not None:  # weight + activation presets: w8a8-*, llm-int8, llm-int8-*
        assert r.format.bits == 8 and name.startswith(("w8a8-", "llm-int8"))
    elif r.format.kind == "int":
        assert name.startswith(f"w{r.format.bits}a16-")
        # The steps appear in the name ("awq+gptq" as "awq-gptq"); rounding to nearest after a
        # transform goes unsaid (w4a16-awq is AWQ + RTN, as in the paper).
        assert r.method.replace("+", "-").removesuffix("-rtn") in name
    elif r.format.kind in ("nf", "fp"):  # NF4/FP4 go by their own names: nf4, nf4-dq, fp4, mxfp4, ...
        prefix = {"e8m0": "mx", "e4m3": "nv"}.get(r.format.scale_dtype, "")
        assert name.startswith(f"{prefix}{r.format.kind}{r.format.bits}")
        assert r.method == "rtn" or r.method.replace("+", "-").removesuffix("-rtn") in name
        assert ("-dq" in name) == r.format.double_quant
    assert r.is_ignored("lm_head")
    assert Recipe.from_dict(r.to_dict()) == r


def test_known_presets_exist_with_their_formats():
    names = preset_names()
    assert {"w4a16-rtn", "w4a16-rtn-sym", "w3a16-rtn", "w8a16-rtn", "w2a16-rtn"} <= set(names)
    assert load_preset("w4a16-rtn").format == FormatSpec(bits=4, sym=False, group_size=64)
    assert load_preset("w4a16-rtn-sym").format == FormatSpec(bits=4, sym=True, group_size=64)
    assert load_preset("w8a16-rtn").format == FormatSpec(bits=8, sym=True, group_size=-1)
    # Asymmetric RTN presets use plain min-max ranges, symmetric ones the clipping search
    # (docs/RTN-CLIPPING.md).
    assert load_preset("w4a16-rtn").rounder == RTNConfig(clip=None)
    assert load_preset("w4a16-rtn-sym").rounder == RTNConfig(clip=ClipSearch())
    with pytest.raises(InputError, match="w5a16.*available"):
        load_preset("w5a16")


def test_overrides_first_match_wins_and_others_get_the_default():
    r = sample_recipe()
    got = {n: r.format_for(n) for n in LAYER_NAMES}
    for n, spec in got.items():
        if n.endswith("mlp.down_proj"):
            assert spec == FormatSpec(bits=8, sym=True, group_size=-1), n
        elif n.endswith(("q_proj", "k_proj")):
            assert spec == FormatSpec(bits=3, sym=False, group_size=32), n
        else:
            assert spec == r.format, n
    # Order matters: a catch-all listed first shadows the rest.
    first = Recipe(r.format, r.steps, overrides=(("*", FormatSpec(bits=2)), *r.overrides))
    assert all(first.format_for(n) == FormatSpec(bits=2) for n in LAYER_NAMES)


def test_ignore_patterns_glob_and_regex():
    r = sample_recipe()
    ignored = {n for n in LAYER_NAMES if r.is_ignored(n)}
    assert ignored == {"lm_head"} | {n for n in LAYER_NAMES if n.startswith("model.layers.0.")}


@pytest.mark.parametrize("pattern,name,expected", [
    ("model.layers.*.mlp.down_proj", "model.layers.3.mlp.down_proj", True),
    ("model.layers.*.mlp.down_proj", "model.layers.3.mlp.up_proj", False),
    ("model.layers.1?.*", "model.layers.12.mlp.up_proj", True),
    ("model.layers.1?.*", "model.layers.1.mlp.up_proj", False),
    ("*q_proj", "model.layers.0.self_attn.q_proj", True),
    ("mlp.down_proj", "model.layers.3.mlp.down_proj", True),      # dotted suffix
    ("down_proj", "model.layers.3.mlp.down_proj", True),
    ("own_proj", "model.layers.3.mlp.down_proj", False),          # suffix only at a dot
    ("lm_head", "lm_head", True),
    ("lm_head", "model.lm_head_extra", False),
    ("re:model\\.layers\\.[0-3]\\..*", "model.layers.3.mlp.down_proj", True),
    ("re:model\\.layers\\.[0-3]\\..*", "model.layers.13.mlp.down_proj", False),
    ("re:down_proj", "model.layers.3.mlp.down_proj", False),      # regex must match the whole name
    ("re:.*down_proj", "model.layers.3.mlp.down_proj", True),
    ("re:.*(gate|up)_proj", "model.layers.3.mlp.up_proj", True),
])
def test_pattern_matching_as_documented(pattern, name, expected):
    assert matches(name, pattern) is expected


@pytest.mark.parametrize("bad,match", [
    ({"steps": [{"method": "rtn"}], "formt": {}}, "formt"),
    ({"steps": [{"method": "rtn"}], "format": {"bits": 4, "group": 64}}, "group"),
    ({"steps": [{"method": "rtn", "clipp": None}]}, "clipp"),
    ({"steps": [{"method": "rtn", "clip": {"grid": 5, "ratio": 0.5}}]}, "ratio"),
    ({"steps": [{"method": "rtn", "clip": {"grid": 0}}]}, "grid"),
    ({"steps": [{"clip": None}]}, "method"),
    ({"steps": [{"method": "magic"}]}, "magic"),
    ({"steps": []}, "at least one step"),
    ({"steps": [{"method": "gptq", "dampp": 0.1}]}, "dampp"),
    ({"steps": [{"method": "rtn"}], "overrides": [{"patern": "x", "format": {}}]}, "pattern"),
    ({"steps": [{"method": "rtn"}], "overrides": [{"pattern": "x", "format": {"bits": 5}}]}, "bits"),
    ({"steps": "rtn"}, "list"),
    ({"steps": [{"method": "rtn"}], "format": {"bits": 16}}, "bits"),
])
def test_unknown_or_bad_fields_raise_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        Recipe.from_dict(bad)


def test_format_errors_are_input_errors():
    with pytest.raises(FormatError):
        Recipe.from_dict({"steps": [{"method": "rtn"}], "format": {"group_size": -3}})


def test_bad_yaml_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("format: {bits: 4\nsteps: [")
    with pytest.raises(InputError, match="broken.yaml"):
        Recipe.from_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- method: rtn\n")
    with pytest.raises(InputError, match="list.yaml.*mapping"):
        Recipe.from_yaml(listing)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("steps: [{method: rtn}]\nbits: 4\n")
    with pytest.raises(InputError, match="unknown.yaml.*bits"):
        Recipe.from_yaml(unknown)


def test_override_format_inherits_unset_fields_from_the_default():
    r = Recipe.from_dict({"format": {"bits": 4, "group_size": 32, "sym": True},
                          "steps": [{"method": "rtn"}],
                          "overrides": [{"pattern": "mlp.down_proj", "format": {"bits": 8}}]})
    assert r.format_for("model.layers.0.mlp.down_proj") == FormatSpec(bits=8, sym=True, group_size=32)
    assert Recipe.from_dict(r.to_dict()) == r


def test_no_preset_file_or_method_means_gptq_w4_g64():
    from lowbit.recipes.build import build_recipe

    assert build_recipe() == load_preset("w4a16-gptq")
    assert build_recipe(bits=3).format == FormatSpec(bits=3, sym=False, group_size=64)
    assert build_recipe(bits=3).method == "gptq"
    # A width with its own preset starts from it: its dampening was chosen for that width.
    assert build_recipe(bits=3) == load_preset("w3a16-gptq") and build_recipe(bits=3).rounder.damp == 1.0
    assert build_recipe().rounder.damp == 2.0
    assert build_recipe(bits=2).format.bits == 2 and build_recipe(bits=2).method == "gptq"  # no w2 GPTQ preset
    assert build_recipe(method="rtn") == load_preset("w4a16-rtn")
