"""bitsandbytes' NF4 (QLoRA's ``load_in_4bit``) on SmolLM2, the peer row beside lowbit's nf4 rows.

Runs in lowbit's venv (bitsandbytes >= 0.50 has a pure-PyTorch CPU path; ``pip install
bitsandbytes``) but never imports lowbit: the float model (the dense copy bench/fp_copy.py saves)
is loaded through transformers with ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=..., bnb_4bit_compute_dtype=float32)``,
``lm_head`` skipped, which is how users get bnb NF4. Every linear in the blocks becomes a
``bnb.nn.Linear4bit``: codes packed two per byte, float32 absmax per 64 weights (``nf4``), or
those absmaxes double-quantized to bnb's 8-bit dynamic map in blocks of 256 (``nf4-dq``).

    .venv/bin/python bench/peers/bnb_nf4.py --recipe nf4 --model FP_DIR --out DIR/nf4
    .venv/bin/python bench/peers/bnb_nf4.py --all --model FP_DIR --out DIR   # nf4 and nf4-dq
    .venv/bin/python bench/quality.py --peers DIR ...                       # evaluate beside lowbit

The checkpoint is transformers' own ``save_pretrained`` of the 4-bit model (``quant_method:
bitsandbytes``), saved before any forward: bitsandbytes 0.50's CPU path rewrites a layer's
packed weight in place on its first forward, and a model saved after that reloads with wrong
weights (seen here on a tiny llama: max |Δw| 0.54 against 0.05 before). ``bench.json`` says
``"loader": "bitsandbytes"``, so bench/quality.py loads it with plain ``from_pretrained`` and runs
bitsandbytes' own Linear4bit forward (on CPU it dequantizes each weight, then multiplies).
``quant_s`` is the whole ``from_pretrained`` (reading the float weights and quantizing them:
bitsandbytes quantizes while loading). ``bits_per_weight`` counts every tensor bitsandbytes stores
per quantized linear (packed codes, absmax, nested absmax and code maps, its serialized
QuantState) over that linear's weights; ``size_mb`` is the checkpoint's weight file.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class BnbRecipe:
    name: str
    double_quant: bool
    blocksize: int = 64  # bitsandbytes' default and only choice through BitsAndBytesConfig

    @property
    def method(self) -> str:  # the schema's names, as lowbit's rows use them
        return "nf4-dq" if self.double_quant else "nf4"


RECIPES = {r.name: r for r in (BnbRecipe("nf4", False), BnbRecipe("nf4-dq", True))}


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def versions() -> dict:
    return {"bitsandbytes": version("bitsandbytes")}


def quantized_bits(directory: Path) -> tuple[float, int]:
    """Bits per weight of the Linear4bit layers from the saved tensors, and how many layers."""
    from safetensors import safe_open

    bits, weights, layers = 0, 0, 0
    with open(directory / "config.json") as f:
        config = json.load(f)
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as h:
            keys = list(h.keys())
            for key in keys:
                if not key.endswith(".weight.quant_state.bitsandbytes__nf4"):
                    continue
                layer = key.removesuffix(".quant_state.bitsandbytes__nf4")
                state = json.loads(bytes(h.get_tensor(key).tolist()).decode())
                out_f, in_f = state["shape"]
                weights += out_f * in_f
                layers += 1
                for k in keys:
                    if k == layer or k.startswith(layer + "."):
                        t = h.get_tensor(k)
                        bits += t.numel() * t.element_size() * 8
    if not layers:
        raise SystemExit(f"{directory}: no bitsandbytes NF4 layers found (config {config.get('quantization_config')})")
    return bits / weights, layers


def quantize(recipe: BnbRecipe, source: Path, out: Path, threads: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if threads:
        torch.set_num_threads(threads)
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=recipe.double_quant,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
    start, cpu_start = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config, dtype=torch.float32,
                                                 device_map="cpu")
    quant_s, quant_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    rss_after_quant = peak_rss_gib()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # before any forward: see the module docstring
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    bpw, layers = quantized_bits(tmp)
    weight_bytes = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    meta = {
        "tool": "bitsandbytes", "recipe": recipe.name, "method": recipe.method, "bits": 4,
        "group_size": recipe.blocksize, "sym": True, "acts": "a16", "loader": "bitsandbytes",
        "quant_s": round(quant_s, 3), "quant_cpu_s": round(quant_cpu_s, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3), "peak_rss_quant_gib": round(rss_after_quant, 3),
        "bits_per_weight": round(bpw, 4), "size_mb": round(weight_bytes / 1e6, 3),
        "quantized_layers": layers, "threads": torch.get_num_threads(), "versions": versions(),
        "model": str(source),
    }
    (tmp / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--recipe", choices=sorted(RECIPES))
    ap.add_argument("--all", action="store_true", help="every recipe, each under OUT/<recipe>")
    ap.add_argument("--model", type=Path, required=True,
                    help="the dense float32 copy of SmolLM2 (bench/fp_copy.py prints its directory)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.all == bool(a.recipe):
        ap.error("give one of --recipe or --all")
    if a.all:
        # One process per recipe, so that each peak RSS is that recipe's alone.
        import subprocess
        for name in RECIPES:
            cmd = [sys.executable, __file__, "--recipe", name, "--model", str(a.model),
                   "--out", str(a.out / name)] + (["--threads", str(a.threads)] if a.threads else [])
            subprocess.run(cmd, check=True)
        return 0
    print(json.dumps(quantize(RECIPES[a.recipe], a.model, a.out, a.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
