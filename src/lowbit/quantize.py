"""The one verb: quantize a model in place with a recipe.

Calibration-free recipes (RTN) visit each target linear once. Recipes whose rounder needs
calibration statistics go through ``pipeline`` (block by block).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithms.registry import rounder_for
from .arch import ArchMap, arch_for, blocks_of, get_module, set_module
from .errors import InputError
from .formats import FormatError
from .modules import QuantLinear
from .modules.factory import quantized_linear
from .modules.input_hadamard import carry_input_hadamard
from .recipes import Recipe


class NonFiniteWeightError(InputError):
    pass


@dataclass
class QuantizationReport:
    recipe: dict
    arch: str
    layers: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # What the recipe's transform steps measured and chose, one row per input group and block
    # (AWQ: alpha, clip ratios, loss before/after); empty for recipes without transforms.
    steps: list[dict] = field(default_factory=list)
    # Static activation quantization: the input scale calibrated for each layer.
    inputs: list[dict] = field(default_factory=list)
    # What a calibration walk's block forwards computed in (pipeline/compute_dtype.py).
    calibration_dtype: str | None = None

    def to_dict(self) -> dict:
        d = {"recipe": self.recipe, "arch": self.arch, "seconds": self.seconds, "layers": self.layers}
        if self.calibration_dtype:
            d["calibration_dtype"] = self.calibration_dtype
        if self.steps:
            d["steps"] = self.steps
        if self.inputs:
            d["inputs"] = self.inputs
        return d


@dataclass(frozen=True)
class Target:
    """One linear to quantize: full name, block index and block-relative path."""
    name: str
    block: int
    path: str


def linear_weight(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """The weight as ``(out, in)``: transformers' Conv1D stores ``(in, out)``."""
    return module.weight.t() if conv1d else module.weight


def find_targets(model: nn.Module, recipe: Recipe, arch: ArchMap | None = None) -> list[Target]:
    arch = arch or arch_for(model)
    targets = []
    for i, _ in enumerate(blocks_of(model, arch)):
        for path in arch.linears:
            name = f"{arch.blocks}.{i}.{path}"
            if get_module(model, name) is None or recipe.is_ignored(name):
                continue
            targets.append(Target(name, i, path))
    return targets


def check_targets(model: nn.Module, recipe: Recipe, targets: list[Target], arch: ArchMap) -> None:
    """Fail before any work: every target fits its format and holds only finite numbers."""
    for t in targets:
        w = linear_weight(get_module(model, t.name), arch.conv1d)
        recipe.format_for(t.name).check_fits(*w.shape, name=t.name)
        if not torch.isfinite(w).all():
            bad = (~torch.isfinite(w)).sum().item()
            raise NonFiniteWeightError(f"{t.name}: weight holds {bad} NaN/Inf values")


def quantize_linear(module: nn.Module, recipe: Recipe, name: str, conv1d: bool, stats=None):
    """Round one linear with the recipe's rounder; returns the QuantLinear and its stats row."""
    step = recipe.rounder
    entry = rounder_for(step.to_dict()["method"])
    spec = recipe.format_for(name)
    start = time.perf_counter()
    w = linear_weight(module, conv1d).detach()
    qw = entry.fn(w, spec, step, stats)
    deq = qw.dequantize(torch.float32)
    err = (deq - w.float()).pow(2).mean().item()
    q = carry_input_hadamard(module, quantized_linear(qw, getattr(module, "bias", None), recipe.activations))
    row = {"name": name, "shape": list(w.shape), "format": spec.label(), "weight_mse": err,
           "seconds": round(time.perf_counter() - start, 4), **qw.stats}
    return q, row


@torch.no_grad()
def quantize_model(model: nn.Module, recipe: Recipe, calib=None, progress: bool = True,
                   **pipeline_options) -> QuantizationReport:
    """Replace every target linear of ``model`` (in place) by a QuantLinear, or by the W8A8
    module of the recipe's activation spec.

    Recipes whose steps need calibration (GPTQ, AWQ, SmoothQuant) take ``calib``, token ids
    ``(n, seq)``, and go through ``lowbit.pipeline.quantize_with_calibration``
    (``pipeline_options``: device, batch_size, true_sequential, offload_hidden, replay_memory); recipes with
    static activation scales take ``calib`` too, for ``pipeline.act_stats.calibrate_input_scales``
    after the weights; the others ignore ``calib``.
    """
    if recipe.needs_calibration and calib is None:
        raise InputError(f"recipe {recipe.name!r} ({recipe.method}) needs calibration data: "
                         f"pass calib= token ids (n_samples, seqlen)")
    start = time.perf_counter()
    # Whole-model transforms (rotate) first: everything after, calibration included, sees the
    # transformed float model.
    from .pipeline.transforms import apply_model_transforms
    model_rows = apply_model_transforms(model, recipe)
    model_seconds = time.perf_counter() - start
    if recipe.steps_need_calibration:
        from .pipeline import quantize_with_calibration
        report = quantize_with_calibration(model, recipe, calib, progress=progress, **pipeline_options)
    else:
        if pipeline_options and not recipe.needs_calibration:
            raise TypeError(f"options {sorted(pipeline_options)} only apply to calibrated recipes")
        report = quantize_each_linear(model, recipe, progress)
    if model_rows:
        report.steps[:0] = model_rows
        report.seconds = round(report.seconds + model_seconds, 3)
    if recipe.activations is not None and recipe.activations.needs_calibration:
        # Static input scales, once the weights are final (pipeline/act_stats.py).
        from .pipeline.act_stats import calibrate_input_scales
        start = time.perf_counter()
        batch_size = pipeline_options.get("batch_size") or 8  # None: the caller left it to us
        report.inputs = calibrate_input_scales(model, calib, recipe.activations, batch_size, progress)
        report.seconds = round(report.seconds + time.perf_counter() - start, 3)
    return report


def quantize_each_linear(model: nn.Module, recipe: Recipe, progress: bool) -> QuantizationReport:
    """Calibration-free weights: round each target linear once."""
    arch = arch_for(model)
    targets = find_targets(model, recipe, arch)
    if not targets:
        raise FormatError("no layer to quantize: every target is ignored or missing")
    check_targets(model, recipe, targets, arch)
    report = QuantizationReport(recipe.to_dict(), arch.name)
    start = time.perf_counter()
    for t in tqdm(targets, desc=f"quantize ({recipe.method})", unit="layer", disable=not progress):
        q, row = quantize_linear(get_module(model, t.name), recipe, t.name, arch.conv1d)
        set_module(model, t.name, q)
        report.layers.append(row)
    report.seconds = round(time.perf_counter() - start, 3)
    _record(model, recipe)
    return report


def _record(model: nn.Module, recipe: Recipe) -> None:
    model.lowbit_recipe = recipe


