"""Deployability rules: which engines and kernels serve a scheme for given shapes (io/deploy.py)."""
from __future__ import annotations

import pytest

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.formats import FormatSpec
from lowbit.io.deploy import Layer, check, layers_of_model, layers_of_plan, report_lines, summary_line
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe


def verdicts(spec: FormatSpec, fmt: str, out_f: int = 4096, in_f: int = 4096) -> dict[str, str | None]:
    return {v.kernel: v.reason for v in check([Layer("l", out_f, in_f, spec)], fmt)}


def test_w4_sym_g128_on_llama_shapes_is_served_by_every_vllm_kernel():
    v = verdicts(FormatSpec(bits=4, sym=True, group_size=128), "compressed-tensors")
    served = {k for k, reason in v.items() if reason is None}
    assert served == {"Machete", "Marlin", "Exllama", "dequantized", "reference/Triton"}
    # Rules for other code kinds (lookup tables) are not listed for an integer scheme.
    assert "reference (lookup table)" not in v and "dequantized (bf16 model)" not in v


def test_lookup_table_formats_are_served_by_lowbit_and_nvfp4_by_transformers_in_bf16():
    nf4 = verdicts(FormatSpec(kind="nf", bits=4, group_size=64, double_quant=True), "native")
    assert nf4 == {"reference (lookup table)": None}
    lines = report_lines([Layer("l", 576, 576, FormatSpec(kind="nf", bits=4, group_size=64))], "native")
    assert any("reference (lookup table)" in line and line.endswith("yes") for line in lines)
    assert lines[-1].startswith("warning: no serving engine")  # only lowbit reads native NF4
    nv = verdicts(FormatSpec(kind="fp", bits=4, group_size=16, scale_dtype="e4m3"), "compressed-tensors")
    assert nv["dequantized (bf16 model)"] is None and nv["reference (lookup table)"] is None
    assert "Marlin" not in nv  # integer-only kernels are not listed for FP4 codes


@pytest.mark.parametrize("spec, shape, kernel, reason", [
    (FormatSpec(bits=4, sym=True, group_size=64), (4096, 4096), "Machete", "group 64 not in [-1, 128]"),
    (FormatSpec(bits=8, sym=False, group_size=128), (4096, 4096), "Marlin", "8-bit asym"),
    (FormatSpec(bits=8, sym=False, group_size=128), (4096, 4096), "Exllama", "8-bit asym"),
    (FormatSpec(bits=4, sym=True, group_size=0), (4096, 4096), "Marlin", "per-tensor scales"),
    # SmolLM2's hidden size 576 is not a multiple of Marlin's 128-wide K tiles.
    (FormatSpec(bits=4, sym=True, group_size=64), (1536, 576), "Marlin", "in 576 % 128"),
    (FormatSpec(bits=4, sym=True, group_size=64), (576, 576), "Machete", "group 64"),
])
def test_each_rule_names_what_it_cannot_serve(spec, shape, kernel, reason):
    got = verdicts(spec, "compressed-tensors", *shape)[kernel]
    assert got is not None and reason in got


def test_smollm2_w4_g64_is_served_by_exllama_only():
    layers = [Layer("up", 1536, 576, FormatSpec(bits=4, sym=True, group_size=64)),
              Layer("down", 576, 1536, FormatSpec(bits=4, sym=True, group_size=64))]
    served = [v.kernel for v in check(layers, "compressed-tensors") if v.ok and v.engine == "vLLM"]
    assert served == ["Exllama"]
    assert "served by vLLM Exllama (sm60+)" in summary_line(layers, "compressed-tensors")


def test_formats_route_to_their_engines():
    spec = FormatSpec(bits=4, sym=False, group_size=128)
    assert verdicts(spec, "gptq")["GPTQ-Marlin"] == "4-bit asym"  # gptq_marlin is symmetric-only
    assert verdicts(spec, "gptq")["GPTQ (exllama/gptq_gemm)"] is None
    assert "GPTQ (exllama/gptq_gemm)" not in verdicts(spec, "gptq-v2")  # vLLM reads version 1 only
    assert verdicts(spec, "awq") == {"AWQ-Marlin": None, "AWQ GEMM": None, "reference/Triton": None}
    assert verdicts(FormatSpec(bits=4, sym=False, group_size=32), "gguf")["Q8_0/Q4_0/Q4_1"] is None
    assert verdicts(spec, "gguf")["Q8_0/Q4_0/Q4_1"] == "group 128 not in [32]"


def test_a_scheme_no_engine_serves_is_warned_about():
    lines = report_lines([Layer("l", 4096, 4096, FormatSpec(bits=3, sym=False, group_size=128))],
                         "compressed-tensors")
    assert lines[-1] == "warning: no serving engine (vLLM, llama.cpp) runs this scheme as compressed-tensors"
    ok = report_lines([Layer("l", 4096, 4096, FormatSpec(bits=4, sym=True, group_size=128))], "compressed-tensors")
    assert not any(line.startswith("warning") for line in ok)


def test_the_plan_sees_the_layers_quantization_will_produce():
    model = tiny_models.build("qwen2")
    recipe = Recipe(format=FormatSpec(bits=4, group_size=32), steps=(RTNConfig(clip=None),),
                    overrides=(("mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),))
    planned = layers_of_plan(model, recipe)
    quantize_model(model, recipe, progress=False)
    assert sorted(planned, key=lambda layer: layer.name) == sorted(layers_of_model(model), key=lambda layer: layer.name)
