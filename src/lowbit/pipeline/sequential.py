"""The block-by-block walk: quantize a model whose rounder needs calibration statistics.

1. Run the model's front on the calibration batches and capture what every block is called with.
2. For each block, in order: move it to the device; for each stage, run the block on all batches
   with hooks that accumulate the Hessians of the stage's linears, round those linears and swap
   in QuantLinears; then run the quantized block on all batches to make the next block's inputs,
   and move the block back. Only one block and the calibration activations are on the device.

Stages: with ``true_sequential`` each input group of the ArchMap (q/k/v, then o, then gate/up,
then down) is one stage, so o's Hessian is measured on outputs of the already quantized q/k/v,
and so on; without it (the default), all linears of a block are measured in one pass on the
float block. On SmolLM2 both walks give the same quality within run-to-run noise (W4 GPTQ
lee-512 36.08 fast vs 36.11 true-sequential, W3 70.04 vs 70.27, docs/GPTQ-DOMAIN.md), and the
fast one runs each block twice instead of once per stage, with no replayed outputs to keep.

Transforms (the recipe's steps before its rounder, e.g. AWQ) run on each block before its
rounding, through the handler registered for their config type (``transforms.py``); the rounder
then sees the transformed weights, and a calibrated rounder (GPTQ) takes its Hessians from the
transformed block. A calibration-free rounder after transforms (AWQ + RTN) needs no statistics:
its linears are rounded directly, and the next block's inputs are the outputs of the float block
that the last transform's statistics pass computed anyway (folding leaves them unchanged; the
paper's code feeds the next block the same float outputs), so each block runs once, not twice.

A true-sequential walk keeps the outputs of the block's finished parts per batch (rounded q/k/v,
then the whole attention) and replays them in the block's later passes (``replay.py``), within
a memory budget, instead of recomputing them once per later stage. On a CPU the calibration also keeps
freed activation memory for reuse within a block (``host_allocator.py``), gives the free heap back
between blocks, runs a rounded block's layers on weights dequantized once per pass
(``dense_pass.py``), and drops the resident file pages of the float weights it replaced
(``host_pages.py``): the walk's memory stays that of one block, not of the whole float model.
On a CPU with native bfloat16 dot products a float32 model's block forwards run in bfloat16
(``compute_dtype.py``; about 4x faster matmuls), while every linear is still rounded from its
float32 weights.

With a ``resume_dir`` every finished block is checkpointed there (``resume.py``); the same call
after a crash restores the finished blocks and continues with the first unfinished one.
"""
from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..algorithms.registry import rounder_for
from ..arch import arch_for, blocks_of, get_module, set_module
from ..errors import LowbitError
from ..formats import FormatError
from ..kernels.dispatch import tuning_paused
from ..quantize import QuantizationReport, _record, check_targets, find_targets
from ..recipes import Recipe
from . import compute_dtype
from .capture import calibration_batches, capture_block_inputs, default_batch_size, run_block, to_hidden_device
from .act_stats import per_token_while_uncalibrated
from .dense_pass import dequantized_once
from .hessians import collect_hessians
from .host_allocator import give_back_free_heap, reuse_freed_host_memory
from .host_pages import release_file_backed
from .replay import ReplayOutputs, default_replay_memory
from .resume import ResumeDir, fingerprint
from .rounding import round_group
from .transforms import BlockContext, block_transform_for


@torch.no_grad()
def quantize_with_calibration(
    model: nn.Module, recipe: Recipe, calib, *, device=None, batch_size: int | None = None,
    true_sequential: bool = False, offload_hidden: bool = False, progress: bool = True,
    resume_dir=None, source: str | None = None, replay_memory: int | None = None,
    calibration_dtype: str | torch.dtype | None = "auto",
) -> QuantizationReport:
    """Quantize ``model`` in place, block by block, with calibration token ids ``calib``
    (``(n, seq)`` or a list of 1-D tensors).

    ``device``: where each block is calibrated (default: where the model is); ``batch_size``:
    calibration windows per forward; ``offload_hidden``: keep the calibration activations on
    the CPU between blocks (for accelerators too small to hold them); ``resume_dir``: checkpoint
    every finished block there and resume from it when it holds this same run (``source``, the
    model's name, joins the fingerprint that decides "same run"). The caller removes the
    directory once the result is saved (``remove_resume_dir``). ``replay_memory``: bytes the
    true-sequential walk may spend on replayed outputs (None: ``default_replay_memory``).
    ``calibration_dtype``: what the block forwards compute in (``compute_dtype.resolve``:
    ``auto`` is bfloat16 for a float32 model on a CPU with native bfloat16, else the model's).
    """
    arch = arch_for(model)
    targets = find_targets(model, recipe, arch)
    if not targets:
        raise FormatError("no layer to quantize: every target is ignored or missing")
    check_targets(model, recipe, targets, arch)
    blocks = blocks_of(model, arch)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    hidden_device = torch.device("cpu") if offload_hidden else device
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    report = QuantizationReport(recipe.to_dict(), arch.name)
    if batch_size is None:
        batch_size = default_batch_size(device)
    batches = calibration_batches(calib, batch_size)
    transforms = recipe.block_transforms  # whole-model ones (rotate) ran before the walk
    calibrated_rounder = rounder_for(recipe.rounder.to_dict()["method"]).needs_calibration
    model_dtype = next(model.parameters()).dtype
    compute = compute_dtype.resolve_for_recipe(calibration_dtype, model_dtype, device, recipe)
    report.calibration_dtype = compute_dtype.dtype_name(compute)
    resume = None
    if resume_dir is not None:
        options = {"batch_size": batch_size, "true_sequential": true_sequential, "device": device.type,
                   "calibration_dtype": report.calibration_dtype}
        resume = ResumeDir(resume_dir, fingerprint(model, recipe.to_dict(), batches, options, source))
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(tuning_paused())
        stack.enter_context(reuse_freed_host_memory(device.type == "cpu"))
        inputs = capture_block_inputs(model, arch, batches, device, hidden_device,
                                      None if compute == model_dtype else compute)
        first = _restore_finished(resume, blocks, inputs, report, hidden_device)
        wanted: dict[int, list[str]] = {}
        for t in targets:
            wanted.setdefault(t.block, []).append(t.path)
        stages = [(g.linears,) for g in arch.groups] if true_sequential \
            else [tuple(g.linears for g in arch.groups)]
        # Without a calibrated rounder the last transform's pass over the float block yields the
        # next block's inputs (see the module docstring).
        reuse_transform_outputs = bool(transforms) and not calibrated_rounder
        if replay_memory is None:
            replay_memory = default_replay_memory(device)
        replay = ReplayOutputs(replay_memory if true_sequential and calibrated_rounder else 0)
        bar = tqdm(range(first, len(blocks)), desc=f"calibrate {recipe.method}", unit="block",
                   total=len(blocks), initial=first, disable=not progress)
        for i in bar:
            block = blocks[i]
            rows_before = len(report.layers)
            steps_before = len(report.steps)
            # The block's weights as loaded: those the walk replaces (by quantized layers, or by
            # copies on the device) are given back below.
            loaded = [p.data for p in block.parameters()]
            block.to(device)
            cast = compute_dtype.BlockInDtype(block, compute) if compute != model_dtype else None
            todo = list(wanted.get(i, ()))
            next_hidden = None
            ctx = BlockContext(block, i, arch, inputs, device, recipe, tuple(todo), hidden_device)
            for k, step in enumerate(transforms):
                keep = reuse_transform_outputs and k == len(transforms) - 1 and i + 1 < len(blocks)
                result = block_transform_for(step)(step, ctx, keep)
                report.steps.extend(result.rows)
                next_hidden = result.outputs if keep else next_hidden
            try:
                for k, stage in enumerate(stages):
                    groups = []
                    for linears in stage:
                        group = tuple(p for p in linears if p in todo)
                        todo = [p for p in todo if p not in group]
                        if group:
                            groups.append(group)
                    if groups and calibrated_rounder:
                        _quantize_stage(block, i, groups, inputs, recipe, arch, device, report, replay, cast)
                        if k + 1 < len(stages):  # the last stage's outputs are computed once anyway
                            done = [p for p in wanted.get(i, ()) if p not in todo]
                            replay.keep(block, done, todo)
                    elif groups:
                        _round_stage(block, i, groups, recipe, arch, report, cast)
                if next_hidden is not None:
                    inputs.hidden = next_hidden
                elif i + 1 < len(blocks):
                    with dequantized_once(block, enabled=device.type == "cpu"), \
                            per_token_while_uncalibrated(block):
                        for b, hidden in enumerate(inputs.hidden):
                            args, kwargs = inputs.call(b, i)
                            replay.set_batch(b)
                            out = run_block(block, hidden.to(device, non_blocking=True), args, kwargs)
                            inputs.hidden[b] = to_hidden_device(out, hidden_device)
            finally:
                replay.release(block)
                if cast is not None:
                    cast.close()
            block.to(home)
            # Replaced weights are never read again; if they are pages of the model file's
            # memory map, nothing else would make them non-resident (host_pages.py).
            release_file_backed(loaded, keep=[*model.parameters(), *model.buffers()])
            del loaded
            if device.type == "cpu":
                give_back_free_heap()
            if resume is not None:
                # Transform rows ride along with the layer rows ("step" tells them apart).
                resume.save_block(i, block, {p: get_module(block, p) for p in wanted.get(i, ())},
                                  report.layers[rows_before:] + report.steps[steps_before:],
                                  inputs.hidden if i + 1 < len(blocks) else None)
            done = [r for r in report.layers if "proxy_err_rel" in r and r["name"].startswith(f"{arch.blocks}.{i}.")]
            if done:
                bar.set_postfix(rel_err=f"{max(r['proxy_err_rel'] for r in done):.2e}")
    finally:
        stack.close()
        model.train(was_training)
    report.seconds = round(time.perf_counter() - start, 3)
    _record(model, recipe)
    return report


def _restore_finished(resume, blocks, inputs, report, hidden_device) -> int:
    """Put back the blocks a previous run of the same call finished; returns how many."""
    if resume is None:
        return 0
    state = resume.load()
    if state.finished:
        # One line even with progress bars off: a resumed run must not look like a fresh one.
        tqdm.write(f"resuming from {resume.path}: {state.finished} of {len(blocks)} blocks done", file=sys.stderr)
    for i in range(state.finished):
        resume.restore_block(i, blocks[i])
    report.layers.extend(r for r in state.rows if "step" not in r)
    report.steps.extend(r for r in state.rows if "step" in r)
    if 0 < state.finished < len(blocks):
        inputs.hidden = resume.load_hidden(state.finished, hidden_device)
    return state.finished


def _round_stage(block, i, groups, recipe, arch, report, cast=None) -> None:
    """Round the stage's linears with a rounder that needs no statistics (RTN)."""
    prefix = f"{arch.blocks}.{i}."
    for paths in groups:
        modules = {prefix + p: get_module(block, p) for p in paths}
        if cast is not None:
            cast.restore(modules.values())
        for name, (q, row) in round_group(modules, recipe, None, arch.conv1d).items():
            set_module(block, name[len(prefix):], q)
            report.layers.append(row)


def _quantize_stage(block, i, groups, inputs, recipe, arch, device, report, replay, cast=None) -> None:
    # true-sequential: parts already rounded
    with dequantized_once(block, enabled=device.type == "cpu"), per_token_while_uncalibrated(block):
        accs = collect_hessians(block, i, groups, inputs, device, arch.conv1d, on_batch=replay.set_batch)
    prefix = f"{arch.blocks}.{i}."
    for paths, acc in zip(groups, accs):
        modules = {prefix + p: get_module(block, p) for p in paths}
        try:
            H = acc.hessian()
        except LowbitError as e:
            raise type(e)(f"{', '.join(modules)}: {e}") from None
        if cast is not None:  # round the weights as loaded, not their copies the forwards ran on
            cast.restore(modules.values())
        for name, (q, row) in round_group(modules, recipe, H, arch.conv1d).items():
            set_module(block, name[len(prefix):], q)
            report.layers.append(row)
