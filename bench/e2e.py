"""End-to-end decode throughput: bf16 against lowbit's W4A16 and W8A8 in a whole Llama-3-8B.

    PYTHONPATH=src python3 bench/e2e.py --out $OUT                  # H100: the issue's table
    .venv/bin/python bench/e2e.py --device cpu --dry --out /tmp/e2e  # smoke check, tiny model
    python3 bench/e2e.py --render bench/results/e2e.json            # its Markdown beside it

The kernel benchmarks (kernels.py, w8a8_kernels.py) time one linear at a time; what a user sees
is tokens per second of a whole model, where attention, norms, the bf16 ``lm_head`` and launch
overhead dilute (or, for slow quantized kernels, expose) the linears' gain. This script builds a
randomly initialised model of Llama-3-8B's shape (32 layers, hidden 4096, MLP 14336, 32 query
and 8 KV heads, vocabulary 128256; no checkpoint needed) in bf16 on the GPU, its weights random
normal with std 0.01: small enough that activations stay finite and that the random 32-layer stack
does not amplify quantization error into noise (at std 0.02 W4A16's logits differed from bf16's by
more than their own norm), and times greedy decoding at batch 1, 8 and 32 for three variants built
one after the other from the same bf16 weights:

- ``bf16``: the model as built;
- ``w4a16``: every decoder linear (q/k/v/o, gate/up/down) a lowbit ``QuantLinear``, int4
  asymmetric, group 128, round-to-nearest; Triton kernels tuned per shape and batch bucket;
- ``w8a8``: every decoder linear a lowbit ``W8A8Linear``, int8 symmetric per-channel weights,
  int8 activations quantized per token at run time (lowbit's Triton GEMV and GEMMs).
Embeddings and ``lm_head`` stay bf16 in every variant (the JSON says so too), except in
``w4a16-head`` (on request, ``--variants``): w4a16 with ``lm_head`` in int4 g128 as well. Also on
request, ``w8a8-static-r4``: the arrangement of the ``w8a8-rotated-hadamard-static`` preset's
layers — int8 weights, static per-tensor int8 inputs (min-max over one random prompt of the bf16
model), and every ``down_proj`` rotating its inputs online (R4; its weights ``W Q``); and
``fp8``: every decoder linear a lowbit ``FP8Linear`` (E4M3 per-channel weights, E4M3 inputs per
token at run time).

Fairness: every variant decodes gpt-fast style through the same loop. transformers' ``StaticCache``
holds the KV cache at fixed addresses; the prompt is prefilled eagerly; a few decode steps run
eagerly (lowbit's Triton dispatch tunes on its first eager call per shape and batch bucket and
never during capture); then ONE decode step (forward of one token per sequence, greedy argmax
written back into the static input, positions advanced in place) is captured in a CUDA graph and
replayed ``--steps`` times back to back, timed with CUDA events; the median over ``--repeats``
series is reported. tokens/s = batch × steps / seconds. Sanity, per quantized variant and batch:
relative error (Frobenius) of the first decode step's logits against bf16's on the same prompt and
input token (random weights: only a smoke signal, it must be finite), and the fraction of greedy
next tokens on which a graph replay agrees with an eager step from the same state.

Writes ``<out>/e2e.json`` and prints a Markdown table last. ``--device cpu --dry``: a tiny Llama
(2 layers, hidden 256), no CUDA graphs (the eager step timed with ``perf_counter``), the same
code otherwise: variant building, static cache, prefill, decode and the agreement check.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import env_prefix  # noqa: E402
from w8a8_kernels import import_lowbit  # noqa: E402  (lowbit's layers even where its __init__ fails)

VARIANTS = ("bf16", "w4a16", "w8a8", "w4a16-head", "w8a8-static-r4", "fp8")
DEFAULT_VARIANTS = ("bf16", "w4a16", "w8a8")  # w4a16-head, w8a8-static-r4, fp8 on request
CALIBRATION_TOKENS = 256  # w8a8-static-r4's static input scales: one random prompt of this length
BATCHES = [1, 8, 32]
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, rope_theta=500000.0,
            max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False)
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
W4_GROUP = 128
FORMATS = {"bf16": "bf16 weights", "w4a16": f"int4 asym g{W4_GROUP} RTN, bf16 activations",
           "w8a8": "int8 sym per-channel RTN weights, int8 dynamic per-token activations",
           "w4a16-head": f"as w4a16, and lm_head int4 asym g{W4_GROUP} RTN too",
           "fp8": "E4M3 per-channel RTN weights, E4M3 dynamic per-token activations",
           "w8a8-static-r4": "int8 sym per-channel RTN weights, int8 static per-tensor activations "
                             "(min-max over one random prompt); down_proj's inputs rotated online "
                             "(randomized Hadamard, R4) and its weights W Q"}


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------ the model

def llama_config(dry: bool, layers: int | None):
    from transformers import LlamaConfig

    shape = dict(TINY if dry else LLAMA3_8B)
    if layers:
        shape["num_hidden_layers"] = layers
    cfg = LlamaConfig(**shape)
    cfg._attn_implementation = "sdpa"  # the same attention kernel for every variant
    return cfg


@torch.no_grad()
def build_model(cfg, device: torch.device, init_std: float, seed: int) -> nn.Module:
    """Random bf16 Llama made directly on ``device`` (no float32 copy, no host round trip)."""
    from transformers import LlamaForCausalLM

    with torch.device(device):
        try:
            model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers < 4.56 knows only torch_dtype
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16,
                                                  attn_implementation="sdpa")
    # Our own init rather than transformers' (whose rules change between versions): the std is
    # then the one the JSON records, and the same seed gives every run the same weights.
    g = torch.Generator(device=device).manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, init_std, generator=g)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model.eval().requires_grad_(False)


def rope_theta(cfg) -> float:
    """transformers 5 keeps it in ``rope_parameters``, 4.x on the config itself."""
    params = getattr(cfg, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(cfg, "rope_theta", None))


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every q/k/v/o/gate/up/down of the decoder layers, as (name, module)."""
    return [(name, m) for name, m in model.named_modules()
            if ".layers." in name and name.rsplit(".", 1)[-1] in DECODER_LINEARS]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def rotates_input(name: str, variant: str) -> bool:
    return variant == "w8a8-static-r4" and name.endswith("down_proj")


def r4_signs(name: str, n: int, seed: int) -> torch.Tensor:
    from lowbit.algorithms.hadamard import random_signs

    return random_signs(n, seed + int(name.split(".layers.")[1].split(".")[0]))


@torch.no_grad()
def static_input_scales(model: nn.Module, cfg, variant: str, seed: int, device) -> dict[str, float]:
    """Each decoder linear's static int8 input scale, ``max |x| / 127`` over one random prompt of
    the bf16 model (down_proj's inputs rotated first, as its W8A8 layer will see them)."""
    from lowbit.modules.input_hadamard import rotate_matmuls

    amax: dict[str, float] = {}

    def hook(name, n):
        signs = r4_signs(name, n, seed).to(device) if rotates_input(name, variant) else None

        def record(_m, args):
            x = args[0] if signs is None else rotate_matmuls(args[0], signs)
            amax[name] = max(amax.get(name, 0.0), float(x.abs().max()))
        return record

    handles = [m.register_forward_pre_hook(hook(name, m.in_features)) for name, m in decoder_linears(model)]
    try:
        g = torch.Generator(device=device).manual_seed(seed)
        model(torch.randint(0, cfg.vocab_size, (1, CALIBRATION_TOKENS), generator=g, device=device))
    finally:
        for h in handles:
            h.remove()
    return {name: max(a, 1e-8) / 127.0 for name, a in amax.items()}


def quantize_linear(linear: nn.Linear, variant: str, name: str = "", seed: int = 0,
                    input_scale: float | None = None) -> nn.Module:
    """The lowbit module for one bf16 linear, RTN-rounded as ``lowbit.quantize`` rounds it."""
    from lowbit.algorithms.rtn import rtn
    from lowbit.formats import FormatSpec
    from lowbit.modules.quant_linear import QuantLinear
    from lowbit.modules.w8a8_linear import WEIGHT_SPEC, W8A8Linear

    w = linear.weight.detach()
    if variant in ("w4a16", "w4a16-head"):
        qw = rtn(w, FormatSpec(bits=4, sym=False, group_size=W4_GROUP))
        return QuantLinear.from_quantized(qw, linear.bias).eval()
    if variant == "w8a8":
        return W8A8Linear.from_quantized(rtn(w, WEIGHT_SPEC), linear.bias).eval()
    if variant == "fp8":
        from lowbit.formats.fp8 import FP8_ROWS
        from lowbit.modules.fp8_linear import FP8Linear

        return FP8Linear.from_quantized(rtn(w, FP8_ROWS), linear.bias).eval()
    if variant == "w8a8-static-r4":
        from lowbit.modules.input_hadamard import attach_input_hadamard, rotate_matmuls

        signs = r4_signs(name, w.shape[1], seed).to(w.device) if rotates_input(name, variant) else None
        if signs is not None:  # W Q: each row of W times Q
            w = rotate_matmuls(w.float(), signs)
        layer = W8A8Linear.from_quantized(rtn(w, WEIGHT_SPEC), linear.bias,
                                          input_scale=torch.tensor([input_scale])).to(w.device).eval()
        return layer if signs is None else attach_input_hadamard(layer, signs)
    raise ValueError(f"unknown variant {variant!r}")


@torch.no_grad()
def swap_in(model: nn.Module, variant: str, device: torch.device, cfg=None, seed: int = 0) -> dict[str, nn.Module]:
    """Replace the decoder linears by ``variant``'s modules, one at a time (so only one layer's
    quantization scratch is alive at once); returns the bf16 originals for ``restore``."""
    originals = {}
    head = [("lm_head", model.lm_head)] if variant == "w4a16-head" else []
    scales = static_input_scales(model, cfg, variant, seed, device) if variant == "w8a8-static-r4" else {}
    for name, linear in [*decoder_linears(model), *head]:
        originals[name] = linear
        set_module(model, name, quantize_linear(linear, variant, name, seed, scales.get(name)))
    sync(device)
    return originals


def restore(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, linear in originals.items():
        set_module(model, name, linear)


def unfuse(model: nn.Module, members: dict[str, nn.Module]) -> None:
    """Undo ``fuse_projections``: the members back in place, the stacked modules dropped."""
    from lowbit.modules.fused_projections import FusedProjection

    restore(model, members)
    for name in [n for n, m in model.named_modules() if isinstance(m, FusedProjection)]:
        parent, _, leaf = name.rpartition(".")
        delattr(model.get_submodule(parent), leaf)


# ------------------------------------------------------------------ decoding

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_static_cache(cfg, max_len: int, batch: int, device: torch.device):
    """transformers' StaticCache across versions: 5.x sizes itself from the first update (batch,
    dtype, device); 4.5x took them as arguments."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": cfg, "max_cache_len": max_len}
    for key, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device),
                       ("dtype", torch.bfloat16)):
        if key in params:
            kwargs[key] = value
    return StaticCache(**kwargs)


class Decoder:
    """One batch's decode state at fixed addresses, so one captured step can be replayed.

    ``step()`` reads ``ids`` and the position tensors, writes the greedy next token back into
    ``ids`` and advances the positions in place: replaying it N times decodes N tokens with no
    host work in between. Where the write position lives depends on the transformers version:
    5.x StaticCache layers keep a ``cumulative_length`` tensor they advance themselves; older ones
    index by the ``cache_position`` argument. ``set_position`` sets all of them.
    """

    def __init__(self, model: nn.Module, batch: int, max_len: int, device: torch.device,
                 step_model=None):
        # step_model: what decode steps call (the model itself, or torch.compile's wrapper of
        # it); prefill always runs the plain model (another sequence length: another compile).
        self.model, self.batch, self.device = model, batch, device
        self.step_model = model if step_model is None else step_model
        self.cache = make_static_cache(model.config, max_len, batch, device)
        params = inspect.signature(type(model).forward).parameters
        self.takes_cache_position = "cache_position" in params
        self.keep_kw = "logits_to_keep" if "logits_to_keep" in params else (
            "num_logits_to_keep" if "num_logits_to_keep" in params else None)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)

    def _forward(self, ids, position_ids, cache_position, model=None):
        kwargs = {"input_ids": ids, "position_ids": position_ids, "past_key_values": self.cache,
                  "use_cache": True}
        if self.takes_cache_position:
            kwargs["cache_position"] = cache_position
        if self.keep_kw:
            kwargs[self.keep_kw] = 1
        return (self.model if model is None else model)(**kwargs).logits[:, -1, :]

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Eager, with lowbit's tuning paused: prefill is not timed, and tuning its token counts
        (64 × batch rows) would cost compile time the decode table does not use."""
        from lowbit.kernels.dispatch import tuning_paused

        n = prompt.shape[1]
        pos = torch.arange(n, device=self.device)
        with tuning_paused():
            logits = self._forward(prompt, pos.unsqueeze(0).expand(self.batch, -1), pos)
        self.set_position(n)
        return logits

    def set_position(self, pos: int) -> None:
        self.position_ids.fill_(pos)
        self.cache_position.fill_(pos)
        for layer in getattr(self.cache, "layers", []):
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(pos)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        logits = self._forward(self.ids, self.position_ids, self.cache_position, self.step_model)
        self.ids.copy_(logits.argmax(-1, keepdim=True))
        self.position_ids.add_(1)
        self.cache_position.add_(1)
        return logits


class Replayer:
    """The decode step as a CUDA graph (GPU) or as the eager call itself (``--device cpu``)."""

    def __init__(self, dec: Decoder, use_graph: bool):
        self.dec, self.graph, self.logits = dec, None, None
        if use_graph:
            self._capture()

    @torch.no_grad()
    def _capture(self) -> None:
        # One step on a side stream first, as torch.cuda.graphs asks: lazy per-stream state
        # (cuBLAS workspaces) must exist before capture starts.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.dec.step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.dec.step()
        torch.cuda.synchronize()

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            return self.dec.step()
        self.graph.replay()
        return self.logits


def time_steps(rep: Replayer, start_pos: int, steps: int, repeats: int) -> list[float]:
    """ms per decode step, one value per series of ``steps`` back-to-back replays."""
    dec, out = rep.dec, []
    for _ in range(repeats):
        dec.set_position(start_pos)
        rep.replay()  # untimed: the first replay after host work pays for waking the GPU
        if rep.graph is not None:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                rep.replay()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / steps)
        else:
            t = time.perf_counter()
            for _ in range(steps):
                rep.replay()
            out.append((time.perf_counter() - t) * 1e3 / steps)
    return out


@torch.no_grad()
def replay_matches_eager(rep: Replayer, pos: int, tokens: torch.Tensor) -> tuple[float, float]:
    """From the same state (position, input tokens), the share of next tokens on which one replay
    agrees with one eager step, and the relative difference of their logits."""
    dec = rep.dec
    dec.set_position(pos)
    dec.ids.copy_(tokens)
    eager_logits = dec.step().float()
    eager_next = dec.ids.clone()
    dec.set_position(pos)
    dec.ids.copy_(tokens)
    replay_logits = rep.replay().float()
    sync(dec.device)
    match = float((dec.ids == eager_next).float().mean())
    return match, rel_err(replay_logits, eager_logits)


# Kernel names → what they do, first match wins (lowbit's own kernels are named in its modules).
KERNEL_KINDS = (
    ("lowbit linears", ("_gemv", "_mma", "_int8", "_quantize_rows", "_scale_int32", "_xhalf2",
                        "_xplanes", "_dequant", "_reduce", "_tma")),
    ("cuBLAS GEMM", ("gemm", "nvjet", "cutlass", "xmma", "splitkreduce")),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("inductor fused", ("triton_",)),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return "other (eager elementwise, copies)"


@torch.no_grad()
def profile_steps(rep: "Replayer", start_pos: int, steps: int) -> dict:
    """GPU kernel time per decode step by kind and the ten costliest kernels (torch.profiler over
    ``steps`` replays; kernels inside CUDA graphs are recorded one by one). ``busy`` is the sum
    of kernel times; the rest of a step's wall time is gaps between kernels."""
    from torch.profiler import ProfilerActivity, profile

    rep.dec.set_position(start_pos)
    rep.replay()
    sync(rep.dec.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            rep.replay()
        sync(rep.dec.device)
    kinds: dict[str, float] = {}
    kernels = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None)
        if us is None:
            us = getattr(e, "cuda_time_total", 0.0)
        if us <= 0:  # host-side runtime calls carry no device time
            continue
        per_step, kind = us / steps, kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + per_step
        kernels.append({"name": e.key[:120], "us_per_step": per_step,
                        "calls_per_step": e.count / steps, "kind": kind})
    kernels.sort(key=lambda k: -k["us_per_step"])
    return {"steps": steps, "busy_us_per_step": sum(kinds.values()),
            "us_per_step_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top_kernels": kernels[:10]}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


@torch.no_grad()
def bench_batch(model, cfg, variant: str, batch: int, args, device, ref_logits: dict,
                step_model=None) -> dict:
    g = torch.Generator(device=device).manual_seed(args.seed + batch)
    prompt = torch.randint(0, cfg.vocab_size, (batch, args.prompt), generator=g, device=device)
    # The first decode input is fixed too (not the prefill's argmax, which differs per variant):
    # then every variant's first decode logits answer the same question.
    first = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g, device=device)
    max_len = args.prompt + args.warmup + args.steps + 8
    dec = Decoder(model, batch, max_len, device, step_model)
    t0 = time.perf_counter()
    prefill_logits = dec.prefill(prompt)
    dec.ids.copy_(first)
    first_logits = dec.step().float()  # eager; on CUDA also tunes lowbit's kernels for this batch
    for _ in range(args.warmup):
        dec.step()
    sync(device)
    warm_s = time.perf_counter() - t0
    use_graph = device.type == "cuda"
    rep = Replayer(dec, use_graph)
    match, replay_diff = replay_matches_eager(rep, args.prompt, first)
    series = time_steps(rep, args.prompt + 1, args.steps, args.repeats)
    ms = statistics.median(series)
    row = {
        "variant": variant, "batch": batch, "timing": "graph" if use_graph else "eager-cpu",
        "prompt": args.prompt, "steps": args.steps, "repeats": args.repeats, "max_cache_len": max_len,
        "ms_per_step": ms, "ms_per_step_series": series, "tokens_per_s": batch * 1e3 / ms,
        "logits_finite": bool(torch.isfinite(first_logits).all() and torch.isfinite(prefill_logits).all()),
        "logits_rel_err_vs_bf16": None, "replay_token_match": match,
        "replay_logits_rel_diff": replay_diff, "prefill_warmup_s": warm_s,
    }
    if args.profile and use_graph:
        row["profile"] = profile_steps(rep, args.prompt + 1, min(args.steps, 16))
    if variant == "bf16":
        ref_logits[batch] = first_logits
    elif batch in ref_logits:
        row["logits_rel_err_vs_bf16"] = rel_err(first_logits, ref_logits[batch])
        row["greedy_match_vs_bf16"] = float((first_logits.argmax(-1) == ref_logits[batch].argmax(-1))
                                            .float().mean())
    del rep, dec
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------ the run

def bench_variant(model, cfg, variant: str, args, device, ref_logits: dict, notes: list) -> tuple[dict, list]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    originals = swap_in(model, variant, device, cfg, args.seed) if variant != "bf16" else {}
    quant_s = time.perf_counter() - t0
    linears = decoder_linears(model)
    info = {"variant": variant, "format": FORMATS[variant], "quantize_s": quant_s,
            "decoder_linears": len(linears),
            "decoder_linear_bytes": sum(module_bytes(m) for _, m in linears),
            "decoder_linear_kind": sorted({type(m).__name__ for _, m in linears}),
            "lm_head_kind": type(model.lm_head).__name__}
    log(f"== {variant}: {info['decoder_linears']} decoder linears "
        f"({', '.join(info['decoder_linear_kind'])}), {info['decoder_linear_bytes'] / 2**30:.3f} GiB, "
        f"built in {quant_s:.1f} s")
    fused_from = None
    if args.fuse:  # after the sizes above: the stacked copies are a run-time arrangement
        from lowbit.modules.fused_projections import fuse_projections

        fused_from = dict(decoder_linears(model))
        info["fused_projections"] = len(fuse_projections(model))
    rows = []
    step_model = None
    if args.compile:  # a fresh compile per variant: its linears are other modules
        torch._dynamo.reset()
        step_model = torch.compile(model, dynamic=False)
    try:
        for batch in args.batches:
            try:
                row = bench_batch(model, cfg, variant, batch, args, device, ref_logits, step_model)
            except Exception as e:
                notes.append(f"{variant} batch {batch}: {type(e).__name__}: {str(e)[-400:]}")
                traceback.print_exc()
                continue
            row["decoder_linear_bytes"] = info["decoder_linear_bytes"]
            rows.append(row)
            log(f"  batch {batch:3d}: {row['tokens_per_s']:10.1f} tok/s  {row['ms_per_step']:8.3f} ms/step  "
                f"rel err vs bf16 {fmt(row['logits_rel_err_vs_bf16'], '{:.3e}')}  "
                f"replay=eager {row['replay_token_match']:.3f}  ({row['prefill_warmup_s']:.1f} s prefill+warm-up)")
    finally:
        if fused_from is not None:
            unfuse(model, fused_from)
        restore(model, originals)
        del originals
        if device.type == "cuda":
            info["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
    return info, rows


def add_speedups(rows: list[dict]) -> None:
    base = {r["batch"]: r["ms_per_step"] for r in rows if r["variant"] == "bf16"}
    for r in rows:
        b = base.get(r["batch"])
        r["speedup_vs_bf16"] = b / r["ms_per_step"] if b else None


def inductor_pdl(args) -> bool:
    """Switch inductor's programmatic dependent launch on when asked; whether it is on."""
    if not args.inductor_pdl:
        return False
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "enable_pdl"):
        raise SystemExit(f"--inductor-pdl: torch {torch.__version__}'s inductor has no triton.enable_pdl")
    inductor_config.triton.enable_pdl = True
    return True


def versions(device: torch.device) -> dict:
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def command_line(argv: list[str]) -> str:
    """The invocation as it should be quoted in the results (output folder as ``$OUT``)."""
    words, skip = [], False
    for w in argv:
        if skip:
            skip = False
            continue
        if w == "--out":
            skip = True
            continue
        if not w.startswith("--out="):
            words.append(w)
    return env_prefix() + " ".join(["PYTHONPATH=src python3 bench/e2e.py", *words, "--out $OUT"])


def run(args, argv: list[str]) -> dict:
    device = torch.device(args.device)
    notes: list[str] = []
    if os.environ.get("LOWBIT_FRAG_LAYOUT") == "1":
        notes.append("with LOWBIT_FRAG_LAYOUT=1 the w4a16 layers also hold fragment-ordered copies "
                     "of their codes, zeros and scales (the codes' size plus 8 bytes per row and "
                     "group), not counted in 'decoder linears MiB'")
    import_lowbit(notes)
    pdl = inductor_pdl(args)  # before any compile: inductor reads the switch when it generates code
    cfg = llama_config(args.dry, args.layers)
    doc = {**versions(device), "command": command_line(argv),
           "model": {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads", "vocab_size")},
           "shape": "tiny Llama (dry run)" if args.dry else "Llama-3-8B",
           "init_std": args.init_std, "seed": args.seed, "attention": "sdpa", "kv_cache": "transformers StaticCache",
           "compile": bool(args.compile), "fused_projections": bool(args.fuse),
           "inductor_pdl": pdl,
           "bf16_everywhere_else": "embeddings, lm_head (but in w4a16-head), norms, attention and the KV cache stay bf16 in every variant",
           "notes": notes, "variants": [], "rows": []}
    doc["model"]["rope_theta"] = rope_theta(cfg)
    for n in notes:
        log("note:", n)
    t0 = time.perf_counter()
    model = build_model(cfg, device, args.init_std, args.seed)
    sync(device)
    doc["build_s"] = time.perf_counter() - t0
    other = sum(module_bytes(m) for m in (model.model.embed_tokens, model.lm_head))
    doc["embed_lm_head_bytes"] = other
    log(f"model: {doc['shape']}, {cfg.num_hidden_layers} layers, built in {doc['build_s']:.1f} s on {doc['device']}; "
        f"embeddings + lm_head {other / 2**30:.3f} GiB bf16")
    ref_logits: dict[int, torch.Tensor] = {}
    for variant in args.variants:
        try:
            info, rows = bench_variant(model, cfg, variant, args, device, ref_logits, notes)
        except Exception as e:
            notes.append(f"{variant}: {type(e).__name__}: {str(e)[-400:]}")
            traceback.print_exc()
            continue
        doc["variants"].append(info)
        doc["rows"] += rows
        add_speedups(doc["rows"])
        doc["seconds"] = time.perf_counter() - t0
        write(doc, args.out)
    doc["seconds"] = time.perf_counter() - t0
    write(doc, args.out)
    return doc


def write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps(doc, indent=1) + "\n")


# ------------------------------------------------------------------ tables

def fmt(v, spec: str = "{:.1f}") -> str:
    return "—" if v is None else spec.format(v)


def table(doc: dict) -> str:
    mib = {v["variant"]: v["decoder_linear_bytes"] / 2**20 for v in doc["variants"]}
    head = ["variant", "batch", "tokens/s", "ms/step", "×bf16", "logits rel err vs bf16",
            "replay = eager tokens", "decoder linears MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in doc["rows"]:
        lines.append("| " + " | ".join([
            r["variant"], str(r["batch"]), fmt(r["tokens_per_s"]), fmt(r["ms_per_step"], "{:.3f}"),
            fmt(r.get("speedup_vs_bf16"), "{:.2f}×"), fmt(r["logits_rel_err_vs_bf16"], "{:.2e}"),
            fmt(r["replay_token_match"], "{:.3f}"), fmt(mib.get(r["variant"]), "{:.1f}")]) + " |")
    return "\n".join(lines)


def render_markdown(doc: dict) -> str:
    m = doc["model"]
    rows = doc["rows"]
    timing = rows[0]["timing"] if rows else "graph"
    first = rows[0] if rows else {}
    lines = [
        f"# End-to-end decode{' (torch.compile)' if doc.get('compile') else ''}: {doc['shape']} on {doc['device']}", "",
        f"- torch {doc['torch']}, triton {doc['triton']}, transformers {doc['transformers']}; {doc['date']}",
        f"- command: `{doc['command']}`",
        f"- model: random init (normal, std {doc['init_std']}), {m['num_hidden_layers']} layers, hidden "
        f"{m['hidden_size']}, MLP {m['intermediate_size']}, {m['num_attention_heads']} query / "
        f"{m['num_key_value_heads']} KV heads, vocabulary {m['vocab_size']}; {doc['bf16_everywhere_else']}",
        "- variants: " + "; ".join(f"`{v['variant']}` {v['format']} ({v['decoder_linear_bytes'] / 2**20:.1f} MiB of "
                                   f"decoder linears, built in {v['quantize_s']:.1f} s)" for v in doc["variants"]),
        f"- decode: static KV cache ({first.get('max_cache_len', '—')} slots), prompt of "
        f"{first.get('prompt', '—')} random tokens prefilled eagerly, eager warm-up steps (lowbit tunes its "
        f"kernels there), then one decode step "
        + ("through `torch.compile` (default mode; lowbit's weight-only linears one custom operator "
           "each, W8A8 layers traced) "
           if doc.get("compile") else "")
        + ("with inductor's kernels launched through programmatic dependent launch (`--inductor-pdl`), "
           if doc.get("inductor_pdl") else "")
        + ("with each block's q/k/v and gate/up stacked into one linear in every variant "
           "(`lowbit.modules.fused_projections`), " if doc.get("fused_projections") else "")
        + ("captured in a CUDA graph and replayed" if timing == "graph" else "run eagerly (no CUDA graph)")
        + f" {first.get('steps', '—')} times back to back; median of {first.get('repeats', '—')} series. "
        "tokens/s = batch × steps / seconds; ×bf16 = bf16 ms/step / variant ms/step",
        "- logits rel err: relative (Frobenius) difference of the first decode step's logits from bf16's on the "
        "same prompt and input token (random weights: a smoke signal only); replay = eager: share of greedy "
        "next tokens on which a replay agrees with an eager step from the same state",
        "", table(doc), "",
    ]
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        kinds = sorted({k for r in profiled for k in r["profile"]["us_per_step_by_kind"]})
        head = ["variant", "batch", "ms/step", "kernels busy µs"] + [f"{k} µs" for k in kinds]
        lines += ["## where a step's time goes (torch.profiler, µs of GPU kernel time per step)", "",
                  "Kernels launched with programmatic dependent launch (lowbit's GEMVs on Hopper) "
                  "start while the previous kernel drains and wait inside, so their time includes "
                  "some of their predecessors' and the busy sum can exceed the step's wall time.",
                  "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in profiled:
            p = r["profile"]
            lines.append("| " + " | ".join(
                [r["variant"], str(r["batch"]), fmt(r["ms_per_step"], "{:.3f}"),
                 fmt(p["busy_us_per_step"])]
                + [fmt(p["us_per_step_by_kind"].get(k, 0.0)) for k in kinds]) + " |")
        lines.append("")
    if doc.get("notes"):
        lines += ["## notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry", action="store_true", help="tiny Llama and few steps (smoke check)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--render", metavar="JSON", help="only write JSON's Markdown beside it")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    ap.add_argument("--batches", type=ints, default=None, help=f"default {','.join(map(str, BATCHES))}")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=list(DEFAULT_VARIANTS),
                    help=f"default {','.join(DEFAULT_VARIANTS)}; also w4a16-head (lm_head in int4 too), "
                         "w8a8-static-r4 (static int8 activations, down_proj rotated online), "
                         "fp8 (E4M3 weights and dynamic per-token inputs)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 64; dry 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps per series (default 64; dry 4)")
    ap.add_argument("--warmup", type=int, default=3, help="eager decode steps before capture")
    ap.add_argument("--repeats", type=int, default=None, help="timed series (default 3; dry 1)")
    ap.add_argument("--init-std", type=float, default=0.01,
                    help="std of the random normal weights (at 0.02 the random 32-layer model is chaotic: "
                         "W4A16's logits then differ from bf16's by more than their own norm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="decode steps through torch.compile (default mode) before CUDA-graph capture; "
                         "lowbit's weight-only linears stay one custom operator each "
                         "(kernels/custom_op.py); W8A8 layers are traced")
    ap.add_argument("--inductor-pdl", action="store_true",
                    help="with --compile, in every variant: inductor's Triton kernels use programmatic "
                         "dependent launch (Hopper; torch._inductor.config.triton.enable_pdl), so they "
                         "launch during the kernel before them and let the next one launch early, as "
                         "lowbit's batch-1 GEMV does")
    ap.add_argument("--fuse", action="store_true",
                    help="in every variant (bf16 included), run each block's q/k/v and gate/up as "
                         "one stacked linear (lowbit.modules.fused_projections)")
    ap.add_argument("--profile", action="store_true",
                    help="also record each step's GPU kernel time by kind (lowbit linears, cuBLAS, "
                         "attention, fused elementwise, other) and the costliest kernels "
                         "(torch.profiler over 16 replays, after the timed series)")
    a = ap.parse_args(argv)
    unknown = set(a.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)} (choose from {', '.join(VARIANTS)})")
    if a.inductor_pdl and not a.compile:
        ap.error("--inductor-pdl needs --compile")
    a.batches = a.batches or BATCHES
    a.prompt = a.prompt or (16 if a.dry else 64)
    a.steps = a.steps or (4 if a.dry else 64)
    a.repeats = a.repeats or (1 if a.dry else 3)
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(render_markdown(json.loads(src.read_text())))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --dry for a smoke check")
    doc = run(args, argv)
    for n in doc["notes"]:
        log("note:", n)
    log(f"wrote {args.out / 'e2e.json'} ({doc['seconds']:.0f} s)")
    log(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
