"""The plan's memory figures against what the pipeline really allocates.

How the peak is measured on a CPU: under ``torch.profiler`` with ``profile_memory=True`` the CPU
allocator counts every allocation and free made while profiling and reports the running total
("Total Allocated") with each event; frees of blocks allocated before profiling started are not
subtracted. So the maximum of that total is the peak of the pipeline's own extra allocations on
top of the already resident model (hidden states, masks, Hessians, working copies, quantized
layers), exact to the byte, independent of Python's and the C library's allocator caches (which
make RSS deltas noisy at these sizes). The plan's host figure minus the model is the same thing.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from click.testing import CliRunner

import tiny_models
from tiny_checkpoint import write_model_dir
from lowbit import FormatSpec, Recipe, quantize_model
from lowbit.algorithms.gptq_step import GPTQConfig
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.arch import arch_for, blocks_of
from lowbit.cli import main
from lowbit.pipeline.plan import plan_quantization, quantized_bytes

W4 = FormatSpec(bits=4, sym=False, group_size=32)


def peak_extra_bytes(fn, trace_path) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(trace_path))
    events = json.loads(trace_path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    assert totals, "the profiler reported no CPU allocation"
    return max(totals)


# Families with different attention plumbing: none materialized (llama, opt), boolean sliding-
# window masks under SDPA (gemma3), eager attention with float masks and scores (gemma2); and
# settings where different parts lead (many windows: activations; big batches: the forward).
# Both compute dtypes of the walk (pipeline/compute_dtype.py): bfloat16 activations halve most of
# the figures but not the float32 softmax of eager attention or the Hessians' widened inputs.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch_name,windows,seqlen,batch,clip", [
    ("llama", 48, 64, 16, False), ("llama", 16, 128, 4, True), ("opt", 32, 64, 8, False),
    ("gemma2", 16, 64, 8, False), ("gemma3", 24, 64, 8, False),
])
def test_plan_memory_is_within_25_percent_of_the_measured_peak(tmp_path, arch_name, windows, seqlen, batch, clip,
                                                               dtype):
    model = tiny_models.build(arch_name)
    recipe = Recipe(format=W4, steps=(GPTQConfig() if clip else GPTQConfig(clip=None),))
    calib = tiny_models.input_ids(batch=windows, seqlen=seqlen, seed=2)
    plan = plan_quantization(model, recipe, windows, seqlen, batch_size=batch, measure=False,
                             calibration_dtype=dtype)
    planned = plan.host_peak - plan.host_parts["model"]
    measured = peak_extra_bytes(
        lambda: quantize_model(model, recipe, calib=calib, progress=False, batch_size=batch,
                               calibration_dtype=dtype),
        tmp_path / "trace.json")
    assert 0.75 < planned / measured < 1.25, (planned, measured, plan.host_parts)


def test_plan_parts_follow_the_model_and_options():
    model = tiny_models.build("llama")
    recipe = Recipe(format=W4, steps=(GPTQConfig(clip=None),))
    arch = arch_for(model)
    d = model.config.hidden_size
    cpu = plan_quantization(model, recipe, 32, 64, batch_size=8, measure=False, calibration_dtype="float32")
    assert cpu.host_parts["calibration activations"] == 32 * 64 * d * 4
    assert cpu.host_parts["model"] == sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))
    # Packed 4-bit codes + float32 scales + int32 zeros of q_proj (64x64, 2 groups of 32 per row).
    assert quantized_bytes(64, 64, W4, 4) == 64 * 8 * 4 + 64 * 2 * (4 + 4)
    # On an accelerator the block's weights join the device figure; the host keeps the model.
    gpu = plan_quantization(model, recipe, 32, 64, batch_size=8, device="cuda", measure=False,
                            calibration_dtype="float32")
    block = max(sum(t.numel() * 4 for t in (*b.parameters(), *b.buffers())) for b in blocks_of(model, arch))
    assert gpu.device_parts["block weights"] == block
    assert gpu.device_parts["calibration activations"] == cpu.host_parts["calibration activations"]
    assert "calibration activations" not in gpu.host_parts
    off = plan_quantization(model, recipe, 32, 64, batch_size=8, device="cuda", offload_hidden=True, measure=False,
                            calibration_dtype="float32")
    assert off.device_parts["calibration activations"] == 8 * 64 * d * 4
    assert off.host_parts["calibration activations"] == 32 * 64 * d * 4
    assert off.device_peak < gpu.device_peak
    # Twice the windows: twice the activations and (nearly) twice the forward/Hessian work.
    double = plan_quantization(model, recipe, 64, 64, batch_size=8, measure=False, calibration_dtype="float32")
    assert double.host_parts["calibration activations"] == 2 * cpu.host_parts["calibration activations"]
    assert 1.5 < (double.flops + double.forward_flops) / (cpu.flops + cpu.forward_flops) <= 2.0
    assert double.rounding_flops == cpu.rounding_flops
    # Checkpointing for resume serializes the activations through one host copy.
    resumable = plan_quantization(model, recipe, 32, 64, batch_size=8, resume=True, measure=False,
                                  calibration_dtype="float32")
    assert resumable.host_peak - cpu.host_peak == 32 * 64 * d * 4


def test_plan_time_is_measured_and_positive():
    model = tiny_models.build("llama")
    plan = plan_quantization(model, Recipe(format=W4, steps=(GPTQConfig(),)), 16, 32, batch_size=8)
    assert plan.matmul_rate > 1e8 and 0 < plan.op_latency < 1e-2 and plan.elementwise_rate > 1e6
    assert plan.seconds > 0 and plan.elementwise > 0  # the clipping search is counted
    text = "\n".join(plan.lines())
    assert "peak host memory" in text and "estimated time" in text


def test_plan_without_calibration_counts_one_linear_at_a_time():
    model = tiny_models.build("llama")
    plan = plan_quantization(model, Recipe(format=W4, steps=(RTNConfig(clip=None),)), 0, 0, measure=False)
    assert set(plan.host_parts) == {"model", "quantized layers", "working set"}
    # The widest linear here is 128x64 (gate/up/down): six float32 working copies.
    assert plan.host_parts["working set"] == 6 * 128 * 64 * 4
    assert plan.seconds is None


def test_cli_dry_run_prints_only_the_plan(tmp_path):
    model_dir = write_model_dir(tmp_path / "tiny-llama")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--method", "gptq", "--group-size", "32",
                                  "--n-samples", "8", "--seqlen", "32", "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "plan    2 blocks, 8 x 32 calibration tokens" in r.output
    assert "peak host memory" in r.output and "estimated time" in r.output
    assert "saved" not in r.output and not out.exists()
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cli_calibration_dtype_reaches_the_plan(tmp_path, dtype):
    model_dir = write_model_dir(tmp_path / "tiny-llama")
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--method", "gptq", "--group-size", "32",
                                  "--n-samples", "8", "--seqlen", "32", "--out", str(tmp_path / "out"),
                                  "--calibration-dtype", dtype, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert f"forwards in {dtype}" in r.output


def test_cli_rejects_an_unknown_calibration_dtype(tmp_path):
    r = CliRunner().invoke(main, ["quantize", "--calibration-dtype", "float8", "--dry-run"])
    assert r.exit_code != 0 and "float8" in r.output
