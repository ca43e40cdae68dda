"""GPTQ on the GPU: seconds per decoder block and peak GPU memory, lowbit beside llm-compressor.

The protocol of ../shared/BENCHMARK.md ("GPTQ on the GPU"): a randomly initialised Llama shape
(quantization time does not depend on the weights), bf16, the model on the CPU and one block at
a time on the GPU, calibration 128 × 2048 random token ids (seed 0), W4A16 group 128. lowbit runs
its ``w4a16-gptq`` settings (act-order with static groups, damp 0.1, clip search) at that format;
llm-compressor runs its ``GPTQModifier(scheme="W4A16")``. Each run is its own process, so peak
memory is that run's alone.

    python bench/gptq_gpu.py                          # lowbit, 8B shape, 4 blocks, both walks
    python bench/gptq_gpu.py --tools lowbit,llmcompressor --blocks 4
    python bench/gptq_gpu.py --tools lowbit --blocks 32 --mem-cap-gib 16 --walks fast
    python bench/gptq_gpu.py --device cpu --shape tiny --blocks 2 --calib 4x64   # smoke check

Writes one JSON line per run to ``$OUT/gptq-gpu.jsonl`` (or ``--out``) and prints a table last.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # hidden, intermediate, heads, kv heads, vocab
    "8b": (4096, 14336, 32, 8, 128256),
    "1b": (2048, 8192, 32, 8, 128256),
    "smol": (576, 1536, 9, 3, 49152),
    "tiny": (128, 256, 4, 2, 1000),
}


def build_model(shape: str, blocks: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, heads, kv, vocab = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, num_hidden_layers=blocks, vocab_size=vocab,
                      max_position_embeddings=4096, torch_dtype="bfloat16")
    # Built on the meta device and filled in place: Hugging Face's own initialisation of an 8B
    # model on the CPU takes minutes; N(0, 0.02) weights and unit norms serve timing just as well.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    # Random numbers drawn on the GPU where there is one (the CPU's generator is one thread).
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            r = torch.empty(p.shape, dtype=p.dtype, device=dev).normal_(0.0, 0.02, generator=g)
            p.data.copy_(r)
            del r
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=cfg)  # its inv_freq buffer was left empty
    model.eval()
    return model


def calibration(vocab: int, n: int, seqlen: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, seqlen), generator=g)


def run_lowbit(args, model, calib) -> dict:
    import torch

    from lowbit.formats import FormatSpec
    from lowbit.pipeline import sequential
    from lowbit.recipes import Recipe, load_preset

    preset = load_preset("w4a16-gptq")
    recipe = Recipe(FormatSpec(kind="int", bits=4, sym=True, group_size=128), preset.steps,
                    preset.ignore, {}, "w4a16-gptq-g128-sym")
    phases = {"capture": 0.0, "checks": 0.0, "moves": 0.0, "hessians": 0.0, "rounding": 0.0,
              "propagate": 0.0}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                phases[name] += time.perf_counter() - t
        return wrapper

    sequential.capture_block_inputs = timed("capture", sequential.capture_block_inputs)
    sequential.check_targets = timed("checks", sequential.check_targets)
    module_to = torch.nn.Module.to
    torch.nn.Module.to = timed("moves", module_to)
    sequential.collect_hessians = timed("hessians", sequential.collect_hessians)
    sequential.round_group = timed("rounding", sequential.round_group)
    sequential.run_block = timed("propagate", sequential.run_block)
    start = time.perf_counter()
    report = sequential.quantize_with_calibration(
        model, recipe, calib, device=args.device, batch_size=args.batch_size,
        true_sequential=args.walk == "true-sequential", offload_hidden=True, progress=False)
    sync()
    seconds = time.perf_counter() - start
    torch.nn.Module.to = module_to
    # collect_hessians runs its own forwards (counted there); propagate is the output pass only.
    return {"seconds": seconds, "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "layers": len(report.layers)}


def run_llmcompressor(args, model, calib) -> dict:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from oneshot_inputs import oneshot_inputs

    ds, processor = oneshot_inputs(model, calib)
    start = time.perf_counter()
    oneshot(model=model, dataset=ds, processor=processor,
            recipe=[GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])],
            max_seq_length=calib.shape[1], num_calibration_samples=calib.shape[0],
            pipeline="sequential")
    return {"seconds": time.perf_counter() - start}


def check_fused(device: str) -> dict:
    """The fused Triton column loop against the PyTorch loop on one correlated problem."""
    import torch

    from lowbit.algorithms import gptq as g
    from lowbit.formats import FormatSpec

    gen = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(4096, 1024, device=device, generator=gen)
    X = X @ (torch.eye(1024, device=device) + 0.05 * torch.randn(1024, 1024, device=device, generator=gen))
    H = 2 * X.t() @ X / X.shape[0]
    W = torch.randn(768, 1024, device=device, generator=gen)
    spec = FormatSpec(kind="int", bits=4, sym=False, group_size=128)
    params = g.GPTQParams(act_order=True, static_groups=True, damp=0.1)
    out = {}
    for fused in (False, True):
        g.FUSED_LOOP = fused
        torch.cuda.synchronize() if device == "cuda" else None
        t = time.perf_counter()
        q = g.gptq(W, H.clone(), spec, params)
        torch.cuda.synchronize() if device == "cuda" else None
        out["fused" if fused else "torch"] = (q, time.perf_counter() - t)
    g.FUSED_LOOP = None
    (qt, tt), (qf, tf) = out["torch"], out["fused"]
    return {"check": "fused-vs-torch", "codes_agree": (qt.codes == qf.codes).float().mean().item(),
            "proxy_err_torch": qt.stats["proxy_err"], "proxy_err_fused": qf.stats["proxy_err"],
            "seconds_torch": round(tt, 3), "seconds_fused": round(tf, 3)}


def one_run(args) -> dict:
    import torch

    if args.device == "cuda" and args.mem_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.mem_cap_gib * 2**30 / total)
    t = time.perf_counter()
    model = build_model(args.shape, args.blocks)
    build_s = time.perf_counter() - t
    n, seqlen = (int(x) for x in args.calib.split("x"))
    calib = calibration(model.config.vocab_size, n, seqlen)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn = run_lowbit if args.tool == "lowbit" else run_llmcompressor
    res = fn(args, model, calib)
    row = {"tool": args.tool, "walk": args.walk if args.tool == "lowbit" else "sequential",
           "shape": args.shape, "blocks": args.blocks, "calib": args.calib,
           "batch_size": args.batch_size if args.tool == "lowbit" else 1,
           "mem_cap_gib": args.mem_cap_gib, "build_s": round(build_s, 1), **res,
           "s_per_block": round(res["seconds"] / args.blocks, 3),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if args.device == "cuda":
        row["peak_gpu_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        row["gpu"] = torch.cuda.get_device_name(0)
    row["torch"] = torch.__version__
    return row


def _error_excerpt(text: str) -> str:
    """The lines of a traceback that name our files, and its last line."""
    lines = text.strip().splitlines()
    ours = [ln for ln in lines if "lowbit" in ln or "gptq_gpu" in ln or "llmcompressor" in ln]
    return "\n".join(ours[-12:] + lines[-1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="lowbit", help="comma-separated: lowbit, llmcompressor")
    ap.add_argument("--walks", default="true-sequential,fast",
                    help="lowbit's walks: true-sequential (q/k/v, o, gate/up, down stages), fast (one stage)")
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--calib", default="128x2048")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mem-cap-gib", type=float, default=0.0, help="torch.cuda.set_per_process_memory_fraction cap")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="JSON lines file (default $OUT/gptq-gpu.jsonl)")
    ap.add_argument("--check-fused", action="store_true", help="only compare the fused and PyTorch GPTQ loops")
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--walk", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_fused:
        print(json.dumps(check_fused(args.device)), flush=True)
        return
    if args.tool:  # child process: one run, one JSON line on stdout
        print("ROW " + json.dumps(one_run(args)), flush=True)
        return
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gptq-gpu.jsonl")
    rows = []
    for tool in args.tools.split(","):
        for walk in (args.walks.split(",") if tool == "lowbit" else ["sequential"]):
            cmd = [sys.executable, __file__, "--tool", tool, "--walk", walk, "--shape", args.shape,
                   "--blocks", str(args.blocks), "--calib", args.calib, "--batch-size", str(args.batch_size),
                   "--mem-cap-gib", str(args.mem_cap_gib), "--device", args.device]
            print(f"== {tool} {walk}", flush=True)
            p = subprocess.run(cmd, capture_output=True, text=True)
            row = next((json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")), None)
            if row is None:
                row = {"tool": tool, "walk": walk, "shape": args.shape, "blocks": args.blocks,
                       "error": _error_excerpt(p.stderr or p.stdout)}
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(f"\n| tool | walk | shape | blocks | s/block | peak GPU alloc GiB | reserved GiB | cap GiB | phases s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['tool']} | {r['walk']} | {r['shape']} | {r['blocks']} | error: {r['error'][-120:]!r} | | | | |")
            continue
        print(f"| {r['tool']} | {r['walk']} | {r['shape']} | {r['blocks']} | {r['s_per_block']} | "
              f"{r.get('peak_gpu_alloc_gib')} | {r.get('peak_gpu_reserved_gib')} | {r['mem_cap_gib'] or '-'} | "
              f"{r.get('phases_s', '')} |")


if __name__ == "__main__":
    main()
