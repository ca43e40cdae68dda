"""Decode a real model token by token through the CUDA kernels and through the reference kernel.

The kernel benchmarks check each kernel on random weights and inputs; this checks the decode
path on SmolLM2-135M (hidden 576: K is no multiple of the 256-input tiles; k/v projections of
192 outputs) with real activations. The model is quantized (RTN presets), cast to bfloat16, and
fed ``--steps`` tokens of ``lee`` one at a time after a short prefill, at batch 1 and 2 (the
half2 GEMV's two paths), once with lowbit's CUDA dispatch and once with the PyTorch reference
kernel. Reported per preset and batch: the largest relative difference of a step's logits, the
share of steps where both pick the same next token, and the perplexity of the decoded tokens
either way.

Prepare the data here once (``bench/recipe_sweep_gpu.py prepare --dir .gpu-data``: token ids and
the GGUF in two parts, each under what one device call carries). On the device, two calls in a
row while the machine is warm: the first carries ``.gpu-data/a`` and stages it under /tmp, the
second carries ``.gpu-data/b`` and runs:

    mkdir -p /tmp/gd/a && cp .gpu-data/a/* /tmp/gd/a/                       # call 1
    mkdir -p /tmp/gd/b && cp .gpu-data/b/* /tmp/gd/b/ && \\
      pip install --no-deps --target /tmp/site /tmp/gd/a/gguf-*.whl && \\
      PYTHONPATH=src:/tmp/site python3 bench/decode_check.py --dir /tmp/gd --out $OUT   # call 2

Smoke check here (CPU: both runs use the reference kernel, so they agree exactly):
``.venv/bin/python bench/decode_check.py --device cpu --dry``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PRESETS = ["w4a16-rtn", "w4a16-rtn-sym@g32", "w8a16-rtn"]  # SmolLM2: 576 inputs, no g128


def recipe_for(name: str):
    """A preset, ``PRESET@gN`` with its format's group size set to N."""
    from lowbit.recipes import Recipe, load_preset

    preset, _, group = name.partition("@g")
    d = load_preset(preset).to_dict()
    if group:
        d["format"]["group_size"] = int(group)
    d["name"] = name
    return Recipe.from_dict(d)


def reference_kernels():
    """A context in which CUDA weight-only layers use the PyTorch reference kernel."""
    import contextlib

    from lowbit.kernels import dispatch

    @contextlib.contextmanager
    def ctx():
        saved = dispatch._KERNELS.pop(("cuda", "weight_only"), None)
        try:
            yield
        finally:
            if saved is not None:
                dispatch._KERNELS[("cuda", "weight_only")] = saved

    return ctx()


@torch.no_grad()
def decode_logits(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits ``(batch, steps, vocab)`` float32 predicting ``ids[:, prefill + 1:]``: a prefill
    of ``prefill`` tokens, then one token per forward through the KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model(input_ids=ids[:, :prefill], past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1:].float()]
    for t in range(prefill, ids.shape[1] - 1):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1:].float())
    return torch.cat(logits, 1)[:, :-1]  # the last prediction has no target


def ppl(logits: torch.Tensor, ids: torch.Tensor, prefill: int) -> float:
    targets = ids[:, prefill:prefill + logits.shape[1]]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            targets.reshape(-1))
    return math.exp(float(nll))


def compare(model, ids: torch.Tensor, prefill: int) -> dict:
    fast = decode_logits(model, ids, prefill)
    with reference_kernels():
        ref = decode_logits(model, ids, prefill)
    diff = ((fast - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten()
    return {"batch": ids.shape[0], "steps": fast.shape[1], "max_step_logits_rel_diff": float(diff.max()),
            "median_step_logits_rel_diff": float(diff.median()),
            "top1_agreement": float((fast.argmax(-1) == ref.argmax(-1)).float().mean()),
            "ppl_kernels": ppl(fast, ids, prefill), "ppl_reference": ppl(ref, ids, prefill)}


def load(args):
    """The float model and the ``lee`` windows (token ids)."""
    if args.dry:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                          num_attention_heads=3, num_key_value_heads=1, vocab_size=500)
        return LlamaForCausalLM(cfg).eval(), torch.randint(0, 500, (2, 64))
    from recipe_sweep_gpu import joined_gguf

    from lowbit.sources import load_model

    fp, _ = load_model(str(joined_gguf(args.dir)))
    return fp, torch.load(args.dir / "a" / "tokens.pt")["lee"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--dir", type=Path, default=Path(".gpu-data"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry", action="store_true", help="tiny random Llama (smoke check)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--prefill", type=int, default=16)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--render", type=Path, metavar="JSON", help="only write JSON's Markdown beside it")
    args = ap.parse_args(argv)
    if args.render:
        render(args.render)
        return 0

    import lowbit

    fp, lee = load(args)
    device = torch.device(args.device)
    total = args.prefill + (min(args.steps, 16) if args.dry else args.steps) + 1
    rows = []
    t0 = time.perf_counter()
    for name in args.presets.split(","):
        recipe = recipe_for(name)
        model = copy.deepcopy(fp).to(device)
        lowbit.quantize_model(model, recipe, progress=False)
        model = model.to(torch.bfloat16).eval()
        for batch in (1, 2):
            ids = lee[:batch, :total].to(device)
            row = {"preset": name, **compare(model, ids, args.prefill)}
            rows.append(row)
            print(f"{name} batch {batch}: max step logits diff {row['max_step_logits_rel_diff']:.2e}, "
                  f"top-1 agreement {row['top1_agreement']:.3f}, PPL {row['ppl_kernels']:.3f} "
                  f"(reference {row['ppl_reference']:.3f})", flush=True)
        del model
    doc = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "model": "random tiny Llama (dry)" if args.dry else "SmolLM2-135M-Instruct (bfloat16)",
           "prefill": args.prefill, "seconds": time.perf_counter() - t0, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_check.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("\n" + table(rows))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| preset | batch | steps | max step logits rel diff | top-1 agreement | PPL kernels | "
             "PPL reference |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['steps']} | "
                     f"{r['max_step_logits_rel_diff']:.2e} | {r['top1_agreement']:.3f} | "
                     f"{r['ppl_kernels']:.3f} | {r['ppl_reference']:.3f} |")
    return "\n".join(lines)


def render(path: Path) -> None:
    doc = json.loads(path.read_text())
    head = [f"# Decode through the CUDA kernels vs the reference kernel: {doc['model']}", "",
            f"- {doc['device']}, torch {doc['torch']}, {doc['date']}",
            "- command: see `bench/decode_check.py` (two device calls: the GGUF travels in halves)",
            f"- {doc['prefill']}-token prefill of `lee`, then one token per forward; logits compared "
            "step by step. A bfloat16 model of 30 layers compounds rounding differences, so two "
            "correct kernels differ by up to ~10% in a step's logits: the 8-bit rows (older "
            "kernels) give the scale. PPL over 128 tokens moves by a percent either way.", ""]
    path.with_suffix(".md").write_text("\n".join(head) + "\n" + table(doc["rows"]) + "\n")


if __name__ == "__main__":
    sys.exit(main())
