"""Know before you run: peak memory and time of a calibrated quantization, from the model's modules.

Nothing is run through the model. The figures follow what ``sequential.py`` keeps alive:

- resident through the whole walk: the calibration hidden states (one ``(tokens, hidden)`` tensor
  in the dtype the forwards compute in, ``compute_dtype.py``, replaced batch by batch, so in and out never both exist in full), the
  captured block arguments (rotary tables, position ids, and attention masks where the model
  materializes them) and the quantized layers made so far;
- on top of that, the largest of three phases of one block:
  *forward* (the block run on one batch: its input, residual and norm output, 1.75 times the
  outputs of its widest input group: gate/up keeps act(gate), up and their product alive, 1.5
  times, and the rest covers the smaller copies around them (rotary q/k, repeat-kv, norms);
  with eager attention the scores and their softmax; plus the batch's output),
  *statistics* (the stage's Hessian accumulators, ``in²`` float32 each, while a batch runs), and
  *rounding* (the stage's accumulators, plus for the largest group four ``in²`` matrices, for H,
  its damped copy, the Cholesky factor and the inverse, and float32 working copies of the stacked
  weights: original, working, codes, dequantized, error, permuted).

The accelerator also holds one block's float weights (the model lives on the host), and a walk
computing in another dtype than the model's a copy of them in that dtype. On a CPU the
accelerator and the host are one memory, so the device figures are reported as host figures.

Time: every matmul-shaped cost (block forwards per stage, Hessian updates, GPTQ's factorizations
and lazy updates) counted in FLOPs and divided by a matmul rate measured on the device for a
fraction of a second (the block forwards at the rate of their compute dtype, everything else
at the float32 rate), plus GPTQ's per-column small operations times a measured per-op latency.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import arch_for, blocks_of, get_module
from ..formats import FormatSpec, packed_width
from ..quantize import find_targets
from ..recipes import Recipe
from . import compute_dtype
from .capture import default_batch_size
from .replay import default_replay_memory, replay_bytes

GIB = 1024 ** 3
# Small operations GPTQ's column loop issues per column (round, clamp, dequantize, error, rank-1
# update, stores), counted from algorithms/gptq.py's _column_loop and _Grid.round_column.
OPS_PER_COLUMN = 14
# Float32 copies of the stacked weights alive while one group is rounded (see module docstring);
# the clipping search adds the blocks' float copy, the trial dequantization and its error.
WEIGHT_COPIES, CLIP_COPIES = 6, 3
# Activations written as a chain of elementwise ops (not one fused kernel) keep a few temporaries
# of the up-projection's width alive at once: gelu_new is 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
# Elementwise passes over a weight per trial ratio of the clipping search (quantize, dequantize,
# error, reduce), from algorithms/rtn.py's search_block_range.
CLIP_PASSES = 4
ACTIVATION_TEMPORARIES = {"gelu_new": 2, "gelu_fast": 2}


@dataclass
class Plan:
    """Peak memory (bytes, with the parts that make them) and estimated seconds of one run."""

    device: str
    blocks: int
    windows: int
    seqlen: int
    batch_size: int
    device_parts: dict[str, int] = field(default_factory=dict)
    host_parts: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0                # float32 matmuls of the walk: the Hessian updates
    forward_flops: float = 0.0        # the block forwards, in the compute dtype
    compute_dtype: str = "float32"
    rounding_flops: float = 0.0       # GPTQ's own matmuls: one thread on a CPU (see gptq.py)
    small_ops: int = 0
    elementwise: float = 0.0          # elements passed through elementwise ops (RTN's range search)
    matmul_rate: float | None = None  # float32 FLOP/s measured on the device
    forward_rate: float | None = None  # FLOP/s in the compute dtype (None: matmul_rate)
    op_latency: float | None = None   # seconds per small op measured on the device
    elementwise_rate: float | None = None  # elements/s of a large elementwise op on the device

    @property
    def device_peak(self) -> int:
        return sum(self.device_parts.values())

    @property
    def host_peak(self) -> int:
        return sum(self.host_parts.values())

    @property
    def seconds(self) -> float | None:
        if self.matmul_rate is None:
            return None
        threads = torch.get_num_threads() if self.device.startswith("cpu") else 1
        return (self.flops / self.matmul_rate + self.forward_flops / (self.forward_rate or self.matmul_rate)
                + self.rounding_flops * threads / self.matmul_rate
                + self.small_ops * self.op_latency + self.elementwise / self.elementwise_rate)

    def lines(self) -> list[str]:
        def parts(d):
            return ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in d.items() if v)
        calib = (f"{self.windows} x {self.seqlen} calibration tokens, batches of {self.batch_size}, "
                 f"forwards in {self.compute_dtype}" if self.windows else "no calibration")
        out = [f"plan    {self.blocks} blocks, {calib}, on {self.device}"]
        if self.device_parts:
            out.append(f"  peak {self.device} memory  {_fmt_bytes(self.device_peak)}  ({parts(self.device_parts)})")
        out.append(f"  peak host memory  {_fmt_bytes(self.host_peak)}  ({parts(self.host_parts)})")
        s = self.seconds
        work = f"{(self.flops + self.forward_flops + self.rounding_flops) / 1e9:.1f} GFLOP, {self.small_ops} small ops, {self.elementwise / 1e9:.2f} G elementwise"
        if s is None:
            out.append(f"  estimated time    ? ({work}; device rates not measured)")
        else:
            rates = f"{self.matmul_rate / 1e9:.0f} GFLOP/s"
            if self.forward_rate:
                rates += f" (float32), {self.forward_rate / 1e9:.0f} ({self.compute_dtype})"
            out.append(f"  estimated time    {_fmt_seconds(s)}  ({work}; measured {rates}, {self.op_latency * 1e6:.1f} us/op, {self.elementwise_rate / 1e9:.1f} G elem/s)")
        return out


def _fmt_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


def quantized_bytes(out_f: int, in_f: int, spec: FormatSpec, scale_bytes: int) -> int:
    """Bytes of one QuantLinear's packed codes, scales and (asymmetric) zeros, bias excluded."""
    groups = 1 if spec.group_size == 0 else (out_f * spec.n_groups(in_f))
    return out_f * packed_width(in_f, spec.bits) * 4 + groups * (scale_bytes + (0 if spec.sym else 4))


def stages_of(arch, true_sequential: bool) -> list[tuple[tuple[str, ...], ...]]:
    """The stages of ``sequential.py``: each a tuple of input groups (block-relative paths)."""
    return [(g.linears,) for g in arch.groups] if true_sequential else [tuple(g.linears for g in arch.groups)]


@torch.no_grad()
def plan_quantization(
    model: nn.Module, recipe: Recipe, windows: int, seqlen: int, *, device=None, batch_size: int | None = None,
    true_sequential: bool = False, offload_hidden: bool = False, resume: bool = False,
    keep_reference: bool = False, measure: bool = True, replay_memory: int | None = None,
    calibration_dtype: str | torch.dtype | None = "auto",
) -> Plan:
    """Peak memory and time of ``quantize_with_calibration`` with ``windows`` calibration windows
    of ``seqlen`` tokens (for a recipe without calibration: of ``quantize_model``'s one pass). ``resume``: the run checkpoints each block (its hidden states are
    serialized through one host copy); ``keep_reference``: the caller keeps a float copy of the
    model (the CLI does, to evaluate before/after); ``measure``: time a matmul and a small op on
    the device (a fraction of a second) so the plan has an estimated time; ``replay_memory``:
    and ``calibration_dtype`` as ``quantize_with_calibration``'s."""
    arch = arch_for(model)
    blocks = blocks_of(model, arch)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    if not recipe.needs_calibration:
        return _plan_without_calibration(model, recipe, arch, len(blocks), keep_reference, measure)
    if batch_size is None:
        batch_size = default_batch_size(device)
    model_dtype = next(model.parameters()).dtype
    e = model_dtype.itemsize
    compute = compute_dtype.resolve_for_recipe(calibration_dtype, model_dtype, device, recipe)
    # Activations, arguments and the forward's temporaries live in the compute dtype.
    ea = compute.itemsize
    d = get_module(model, arch.embeddings[0]).weight.shape[1]
    tokens = windows * seqlen
    batch_tokens = min(batch_size, windows) * seqlen
    n_batches = math.ceil(windows / batch_size)
    head_dim = _head_dim(model.config, d)
    targets = find_targets(model, recipe, arch)
    wanted = {(t.block, t.path) for t in targets}
    scale_bytes = e  # scales are stored in the model dtype
    clip = getattr(recipe.rounder, "clip", None)
    clip_copies = CLIP_COPIES if clip is not None else 0

    hidden = tokens * d * ea
    masks, mask_bytes, eager_heads = _attention_extras(model.config, ea)
    batch = min(batch_size, windows)
    # Rotary tables and position ids per batch; a materialized (batch, 1, seq, seq) mask per kind
    # of attention where the model builds one (eager attention, sliding windows).
    args = n_batches * (2 * seqlen * head_dim * ea + seqlen * 8 + masks * batch * seqlen * seqlen * mask_bytes)
    act_copies = ACTIVATION_TEMPORARIES.get(_activation(model.config), 0)
    # Eager attention materializes the scores and their softmax for every head; the softmax is
    # taken in float32 and, in a narrower compute dtype, cast back.
    scores = eager_heads * batch * seqlen * seqlen * (ea + 4 + (ea if ea < 4 else 0))
    quantized = sum(quantized_bytes(*_shape(get_module(model, t.name), arch.conv1d),
                                    recipe.format_for(t.name), scale_bytes) for t in targets)
    phase = {"forward": 0, "statistics": 0, "rounding": 0}
    forward_flops, flops, rounding_flops, small_ops, elementwise = 0.0, 0.0, 0.0, 0, 0.0
    if replay_memory is None:
        replay_memory = default_replay_memory(device)
    replay_budget = replay_memory if true_sequential else 0
    replay_held = 0
    for i, block in enumerate(blocks):
        groups = [tuple(p for p in g.linears if get_module(block, p) is not None) for g in arch.groups]
        outs = {p: _shape(get_module(block, p), arch.conv1d)[0] for g in groups for p in g}
        ins = {p: _shape(get_module(block, p), arch.conv1d)[1] for g in groups for p in g}
        widest = max(sum(outs[p] for p in g) for g in groups if g)
        live = batch_tokens * ea * (3 * d + 7 * widest // 4 + act_copies * widest)
        phase["forward"] = max(phase["forward"], live + scores + batch_tokens * d * ea)
        heads = sum(outs[p] for p in groups[0]) if groups and groups[0] else d
        attention_flops = 2 * seqlen * heads  # causal QKᵀ and AV per token, about half of 4·seq·width
        block_stages = [[p for g in stage for p in g if (i, p) in wanted] for stage in stages_of(arch, true_sequential)]
        block_stages = [st for st in block_stages if st]
        need = replay_bytes(block_stages, outs, d, tokens, e) if replay_budget and len(block_stages) > 1 else 0
        replays = 0 < need <= replay_budget
        replay_held = max(replay_held, min(need, replay_budget))
        for stage in stages_of(arch, true_sequential):
            stage_groups = [tuple(p for p in g if (i, p) in wanted) for g in stage]
            stage_groups = [g for g in stage_groups if g]
            if not stage_groups:
                continue
            accs = sum(ins[g[0]] ** 2 * 4 for g in stage_groups)
            # A Hessian widens a non-float32 batch input to float32 first; by then the forward
            # has left the attention, so only the widening's extra bytes add to what is live.
            widened = batch_tokens * max(ins[g[0]] for g in stage_groups) * (4 - ea) if ea < 4 else 0
            phase["statistics"] = max(phase["statistics"], accs + live + widened)
            for g in stage_groups:
                n_in, n_out = ins[g[0]], sum(outs[p] for p in g)
                work = 4 * n_in * n_in * 4 + (WEIGHT_COPIES + clip_copies) * n_out * n_in * 4
                phase["rounding"] = max(phase["rounding"], accs + work)
                flops += 2 * tokens * n_in ** 2            # Hessian updates
                # Factorizations, lazy updates, and four output-error measurements (D·H, 2·out·in²
                # each: the rounder's and the pipeline's report, each with its reference).
                rounding_flops += 2 * n_in ** 3 + n_out * n_in ** 2 + 8 * n_out * n_in ** 2
                small_ops += OPS_PER_COLUMN * n_in
                if clip is not None:
                    elementwise += CLIP_PASSES * clip.grid * n_out * n_in
            # The statistics pass runs the block only up to the inputs of this stage's linears.
            first = min(_group_index(groups, g[0]) for g in stage_groups)
            before = [p for grp in groups[:first] for p in grp]
            if not replays:
                forward_flops += tokens * (sum(2 * outs[p] * ins[p] for p in before) + (attention_flops if before else 0))
        if replays:
            # Replayed (replay.py): every linear runs once after it is rounded, the attention
            # twice (up to o, then whole once o is rounded).
            forward_flops += tokens * (sum(2 * outs[p] * ins[p] for p in outs) + 2 * attention_flops)
        elif i + 1 < len(blocks):  # the output pass
            forward_flops += tokens * (sum(2 * outs[p] * ins[p] for p in outs) + attention_flops)

    peak_phase = max(phase.values())
    block_bytes = max(_module_bytes(b) for b in blocks)
    on_device = {"calibration activations": hidden if not offload_hidden else batch_tokens * d * ea,
                 "block arguments": args, "working set": peak_phase, "replayed outputs": replay_held,
                 f"block copy in {compute_dtype.dtype_name(compute)}": 0 if compute == model_dtype else block_bytes * ea // e}
    host = {"model": _module_bytes(model), "quantized layers": quantized}
    if keep_reference:
        host["float reference"] = _module_bytes(model)
    if offload_hidden and device.type != "cpu":
        host["calibration activations"] = hidden
    if resume:
        host["checkpoint copy"] = hidden
    plan = Plan(str(device), len(blocks), windows, seqlen, batch_size, flops=flops,
                forward_flops=forward_flops, compute_dtype=compute_dtype.dtype_name(compute),
                rounding_flops=rounding_flops, small_ops=small_ops, elementwise=elementwise)
    if device.type == "cpu":
        host.update({k: v for k, v in on_device.items() if k not in host})
    else:
        plan.device_parts = {"block weights": block_bytes, **on_device}
    plan.host_parts = host
    if measure:
        plan.matmul_rate, plan.op_latency, plan.elementwise_rate = measure_device(device)
        if compute != torch.float32:
            plan.forward_rate = measure_matmul_rate(device, compute)
    return plan


def _plan_without_calibration(model, recipe, arch, n_blocks, keep_reference, measure) -> Plan:
    """One linear at a time on the host: its float32 working copies are the only extra."""
    e = next(model.parameters()).element_size()
    clip = getattr(recipe.rounder, "clip", None)
    copies = WEIGHT_COPIES + (CLIP_COPIES if clip is not None else 0)
    shapes = [(_shape(get_module(model, t.name), arch.conv1d), recipe.format_for(t.name))
              for t in find_targets(model, recipe, arch)]
    host = {"model": _module_bytes(model),
            "quantized layers": sum(quantized_bytes(o, i, spec, e) for (o, i), spec in shapes),
            "working set": max((copies * o * i * 4 for (o, i), _ in shapes), default=0)}
    if keep_reference:
        host["float reference"] = _module_bytes(model)
    # Each trial range of the clipping search quantizes, dequantizes and measures every weight.
    passes = CLIP_PASSES * (clip.grid if clip is not None else 1) + 4
    plan = Plan("cpu", n_blocks, 0, 0, 0, host_parts=host,
                elementwise=float(passes * sum(o * i for (o, i), _ in shapes)))
    if measure:
        plan.matmul_rate, plan.op_latency, plan.elementwise_rate = measure_device(
            next(model.parameters()).device)
    return plan


def _group_index(groups, path) -> int:
    return next(k for k, g in enumerate(groups) if path in g)


def _shape(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    """``(out, in)`` of a linear (transformers' Conv1D stores ``(in, out)``)."""
    return (module.weight.shape[1], module.weight.shape[0]) if conv1d else tuple(module.weight.shape)


def _head_dim(config, hidden: int) -> int:
    hd = getattr(config, "head_dim", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return hd or (hidden // heads if heads else hidden)


def _activation(config) -> str | None:
    return getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None) \
        or getattr(config, "activation_function", None)


def _attention_extras(config, e: int) -> tuple[int, int, int]:
    """(mask kinds materialized per batch, bytes per mask element, heads whose scores are
    materialized). Eager attention gets an additive float mask for every kind of layer; SDPA
    gets none for plain causal attention and a boolean one for sliding windows."""
    eager = getattr(config, "_attn_implementation", None) == "eager"
    sliding = getattr(config, "sliding_window", None) is not None
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    if eager:
        kinds = len(set(getattr(config, "layer_types", None) or ())) or (2 if sliding else 1)
        return kinds, e, heads
    return (1 if sliding else 0), 1, 0


def _best_seconds(device: torch.device, op, seconds: float, trials: int) -> float:
    """Seconds per call of ``op``: the best of a few short trials (on a shared machine a single
    trial measures the neighbours as much as the device)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    op()
    sync()
    best = math.inf
    for _ in range(trials):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / trials:
            op()
            reps += 1
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def measure_matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 512,
                        trials: int = 5) -> float:
    """Matmul FLOP/s of ``n``-square matrices of ``dtype`` on ``device``, in about 0.1 s."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n ** 3 / _best_seconds(device, lambda: a @ b, 0.1, trials)


def measure_device(device: torch.device, n: int = 512, trials: int = 5) -> tuple[float, float, float]:
    """Float32 matmul FLOP/s, the latency of one small op and elementwise elements/s on
    ``device``, in about 0.2 s."""

    def best_seconds(op, seconds: float) -> float:
        return _best_seconds(device, op, seconds, trials)

    rate = measure_matmul_rate(device, torch.float32, n, trials)
    x, big = torch.randn(64, device=device), torch.randn(1 << 22, device=device)
    latency = best_seconds(lambda: x.mul_(1.0), 0.03)
    elementwise_rate = big.numel() / best_seconds(lambda: big.mul_(1.0), 0.05)
    return rate, latency, elementwise_rate
