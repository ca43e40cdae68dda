"""Round the linears of one input group with the recipe's rounder, given their shared statistics.

Rounders treat output rows independently, so linears that read the same input and share a
format are stacked along ``out`` and rounded in one call (q/k/v, gate/up): one Cholesky and one
column loop instead of three, bigger matmuls, identical results per row.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..algorithms.gptq import output_error
from ..algorithms.quantized_weight import QuantizedWeight
from ..algorithms.registry import rounder_for
from ..errors import LowbitError
from ..modules import QuantLinear
from ..modules.factory import quantized_linear
from ..modules.input_hadamard import carry_input_hadamard
from ..quantize import linear_weight
from ..recipes import Recipe

# An earlier step (AWQ's clipping search) may leave on a linear the weights whose block ranges
# the rounder should use, when the rounder ``takes_ranges`` (registry.py) and the linear's own
# weight stays unclipped; only for the walk's current block, never saved.
RANGE_WEIGHT = "_lowbit_range_weight"


def split_rows(qw: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    """Cut a stacked result back into one QuantizedWeight per linear (block params are per row;
    an NVFP4 global scale belongs to the whole stack, so its parts share it)."""
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        out.append(QuantizedWeight(qw.codes[rows], qw.scale[rows],
                                   None if qw.zero is None else qw.zero[rows], qw.spec, dict(qw.stats),
                                   global_scale=qw.global_scale))
        start += n
    return out


@torch.no_grad()
def round_group(modules: dict[str, nn.Module], recipe: Recipe, H: torch.Tensor | None,
                conv1d: bool) -> dict[str, tuple[QuantLinear, dict]]:
    """``modules``: full name -> linear, all reading one input. Returns name -> (QuantLinear, row)."""
    step = recipe.rounder
    entry = rounder_for(step.to_dict()["method"])
    by_spec: dict = {}
    for name in modules:
        by_spec.setdefault(recipe.format_for(name), []).append(name)
    results = {}
    for spec, names in by_spec.items():
        # Per-tensor scales are shared by all rows, and double-quantized scales are coded per
        # matrix (one offset, blocks of 256 scales), so those linears cannot be stacked.
        chunks = [names] if spec.group_size != 0 and not spec.double_quant else [[n] for n in names]
        for chunk in chunks:
            weights = [linear_weight(modules[n], conv1d).detach() for n in chunk]
            ranges = [getattr(modules[n], RANGE_WEIGHT, None) for n in chunk]
            extra = {}
            if entry.takes_ranges and all(r is not None for r in ranges):
                extra["range_weight"] = torch.cat(ranges) if len(ranges) > 1 else ranges[0]
            start = time.perf_counter()
            try:
                qw = entry.fn(torch.cat(weights) if len(weights) > 1 else weights[0], spec, step, H, **extra)
            except LowbitError as e:
                raise type(e)(f"{', '.join(chunk)}: {e}") from None
            seconds = (time.perf_counter() - start) / len(chunk)
            parts = split_rows(qw, [w.shape[0] for w in weights]) if len(chunk) > 1 else [qw]
            for n, w, part in zip(chunk, weights, parts):
                results[n] = _finish(n, w, part, modules[n], spec, H, seconds, chunk, recipe.activations)
    return results


def _finish(name, w, qw, module, spec, H, seconds, chunk, activations=None):
    deq = qw.dequantize(torch.float32)
    row = {**qw.stats, "name": name, "shape": list(w.shape), "format": spec.label(),
           "weight_mse": (deq - w.float()).pow(2).mean().item(), "seconds": round(seconds, 4)}
    if H is not None and (len(chunk) > 1 or "proxy_err_rel" not in qw.stats):
        # Per layer, not per stacked call: mean squared output error on the calibration inputs
        # (a rounder that had one layer's H already measured it).
        err, ref = output_error(w, deq, H), output_error(w, torch.zeros_like(deq), H)
        row.update(proxy_err=err, proxy_err_rel=err / ref if ref > 0 else 0.0)
    if len(chunk) > 1:
        row["rounded_with"] = [n for n in chunk if n != name]
    q = carry_input_hadamard(module, quantized_linear(qw, getattr(module, "bias", None), activations))
    return q, row
