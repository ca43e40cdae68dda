"""Calibration forwards in bfloat16, rounding from the float32 weights (pipeline/compute_dtype.py)."""
from __future__ import annotations

import copy

import pytest
import torch

import tiny_models
from lowbit import FormatSpec, Recipe, quantize_model
from lowbit.algorithms.awq_step import AWQConfig
from lowbit.algorithms.gptq_step import GPTQConfig
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.arch import arch_for, blocks_of
from lowbit.errors import InputError
from lowbit.modules import QuantLinear
from lowbit.pipeline import compute_dtype, quantize_with_calibration
from lowbit.pipeline.compute_dtype import BlockInDtype, resolve
from lowbit.pipeline.plan import plan_quantization

W4 = FormatSpec(bits=4, sym=False, group_size=32)
CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bfloat16_only_where_it_is_a_pure_win(monkeypatch, native):
    monkeypatch.setattr(compute_dtype, "cpu_has_native_bf16", lambda: native)
    f32, bf16 = torch.float32, torch.bfloat16
    assert resolve("auto", f32, CPU, calibrated=True, transforms=False) == (bf16 if native else f32)
    assert resolve(None, f32, CPU, calibrated=True, transforms=False) == (bf16 if native else f32)
    # Transforms fold into the model's weights; rounders without statistics need no forwards;
    # a bfloat16 model already computes in bfloat16; an accelerator keeps the model's dtype.
    assert resolve("auto", f32, CPU, calibrated=True, transforms=True) == f32
    assert resolve("auto", f32, CPU, calibrated=False, transforms=False) == f32
    assert resolve("auto", torch.float16, CPU, calibrated=True, transforms=False) == torch.float16
    assert resolve("auto", f32, torch.device("cuda"), calibrated=True, transforms=False) == f32
    # Explicit choices are obeyed whatever the CPU.
    assert resolve("float32", f32, CPU, calibrated=True, transforms=False) == f32
    assert resolve("bfloat16", f32, CPU, calibrated=True, transforms=False) == bf16
    assert resolve(torch.bfloat16, f32, CPU, calibrated=True, transforms=False) == bf16
    assert resolve("model", torch.float16, CPU, calibrated=True, transforms=False) == torch.float16


def test_bad_or_unsupported_choices_are_clear_errors():
    with pytest.raises(InputError, match="one of"):
        resolve("float8", torch.float32, CPU, calibrated=True, transforms=False)
    with pytest.raises(InputError, match="without transforms"):
        resolve("bfloat16", torch.float32, CPU, calibrated=True, transforms=True)


def test_block_in_dtype_casts_for_the_forward_and_gives_every_tensor_back():
    model = tiny_models.build("llama")
    block = blocks_of(model, arch_for(model))[0]
    before = {n: (p.data_ptr(), p.dtype) for n, p in block.named_parameters()}
    cast = BlockInDtype(block, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in block.parameters())
    q = block.self_attn.q_proj
    cast.restore([q])  # about to be rounded: the original float32 tensor itself, not a copy
    assert (q.weight.data_ptr(), q.weight.dtype) == before["self_attn.q_proj.weight"]
    assert block.self_attn.k_proj.weight.dtype == torch.bfloat16
    cast.close()
    assert {n: (p.data_ptr(), p.dtype) for n, p in block.named_parameters()} == before


def _with_dtype(recipe, calib, dtype, model):
    model = copy.deepcopy(model)
    report = quantize_with_calibration(model, recipe, calib, progress=False, batch_size=4,
                                       calibration_dtype=dtype)
    return model, report


def test_rounding_reads_the_float32_weights_not_their_bfloat16_copies():
    # RTN through the walk ignores the activations: with bfloat16 forwards it must round exactly
    # what a float32 walk rounds, and leave every unrounded tensor float32.
    model = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=8, seqlen=16, seed=3)
    recipe = Recipe(format=W4, steps=(RTNConfig(clip=None),))
    a, rep_a = _with_dtype(recipe, calib, "float32", model)
    b, rep_b = _with_dtype(recipe, calib, "bfloat16", model)
    assert (rep_a.calibration_dtype, rep_b.calibration_dtype) == ("float32", "bfloat16")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("arch_name", ["llama", "gemma2", "opt"])
def test_gptq_with_bfloat16_forwards_matches_the_float32_walk_up_to_activation_noise(arch_name):
    torch.manual_seed(0)
    model = tiny_models.build(arch_name)
    calib = tiny_models.input_ids(batch=16, seqlen=32, seed=4)
    ids = tiny_models.input_ids(batch=4, seqlen=32, seed=5)
    recipe = Recipe(format=W4, steps=(GPTQConfig(),))
    with torch.no_grad():
        ref = model(ids).logits
    a, _ = _with_dtype(recipe, calib, "float32", model)
    b, rep = _with_dtype(recipe, calib, "bfloat16", model)
    assert rep.calibration_dtype == "bfloat16"
    assert all(p.dtype == torch.float32 for p in b.parameters() if p.is_floating_point())
    layers = [m for m in b.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.weight_scale.dtype == torch.float32 for m in layers)
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    quant_err = (la - ref).norm()
    # bfloat16 statistics move the result by far less than quantization itself does.
    assert (lb - la).norm() < 0.5 * quant_err
    assert (lb - ref).norm() < 1.25 * quant_err


def test_transforms_keep_the_model_dtype_under_auto():
    model = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=8, seqlen=16, seed=3)
    recipe = Recipe(format=W4, steps=(AWQConfig(), GPTQConfig()))
    report = quantize_model(model, recipe, calib=calib, progress=False, batch_size=4)
    assert report.calibration_dtype == "float32"


def test_the_plan_counts_activations_in_the_compute_dtype():
    model = tiny_models.build("llama")
    recipe = Recipe(format=W4, steps=(GPTQConfig(),))
    f32 = plan_quantization(model, recipe, 32, 64, batch_size=8, measure=False, calibration_dtype="float32")
    bf16 = plan_quantization(model, recipe, 32, 64, batch_size=8, measure=False, calibration_dtype="bfloat16")
    assert (f32.compute_dtype, bf16.compute_dtype) == ("float32", "bfloat16")
    assert bf16.host_parts["calibration activations"] * 2 == f32.host_parts["calibration activations"]
    assert bf16.host_parts["block copy in bfloat16"] > 0 and "block copy in float32" not in \
        {k for k, v in f32.host_parts.items() if v}
    # The same work, split the same way: Hessians in float32, forwards in the compute dtype.
    assert bf16.flops == f32.flops and bf16.forward_flops == f32.forward_flops > 0
    assert "forwards in bfloat16" in bf16.lines()[0]
