"""bitsandbytes' LLM.int8() (``load_in_8bit``) on SmolLM2, the peer row beside lowbit's llm-int8.

Runs in lowbit's venv (bitsandbytes >= 0.50 runs its int8 ops on the CPU in PyTorch) but never
imports lowbit: the dense float32 copy of the model (bench/fp_copy.py) is loaded through
transformers with ``BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)``, ``lm_head``
skipped, which is how users get LLM.int8(). Every linear in the blocks becomes a
``bnb.nn.Linear8bitLt``: int8 weights with one float32 scale per row (``SCB``); at run time the
input columns holding any ``|x| >= 6`` are multiplied in 16/32-bit, the rest in int8 per token.

    .venv/bin/python bench/peers/bnb_llm_int8.py --model FP_DIR --out DIR/llm-int8
    .venv/bin/python bench/quality.py --peers DIR ...            # evaluate beside lowbit

Saved with transformers' own ``save_pretrained`` right after loading (before any forward, as
bench/peers/bnb_nf4.py does for the 4-bit layers); ``bench.json`` says ``"loader":
"bitsandbytes"``, so bench/quality.py reloads it with plain ``from_pretrained`` and runs
bitsandbytes' own forward. ``bits_per_weight`` counts the int8 weights and their row scales.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
THRESHOLD = 6.0


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def quantized_bits(directory: Path) -> tuple[float, int]:
    """Bits per weight of the Linear8bitLt layers (``L.weight`` int8 + ``L.SCB``), and how many."""
    from safetensors import safe_open

    bits, weights, layers = 0, 0, 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as h:
            keys = set(h.keys())
            for key in keys:
                if not key.endswith(".SCB"):
                    continue
                layer = key.removesuffix(".SCB")
                w = h.get_tensor(f"{layer}.weight")
                scb = h.get_tensor(key)
                weights += w.numel()
                bits += 8 * (w.numel() * w.element_size() + scb.numel() * scb.element_size())
                layers += 1
    if not layers:
        raise SystemExit(f"{directory}: no bitsandbytes int8 layers (no *.SCB tensors) found")
    return bits / weights, layers


def quantize(source: Path, out: Path, threads: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if threads:
        torch.set_num_threads(threads)
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=THRESHOLD, llm_int8_skip_modules=["lm_head"])
    start, cpu_start = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config, dtype=torch.float32,
                                                 device_map="cpu")
    quant_s, quant_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    rss_after_quant = peak_rss_gib()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    bpw, layers = quantized_bits(tmp)
    meta = {
        "tool": "bitsandbytes", "recipe": "llm-int8", "method": "llm-int8", "bits": 8, "group_size": -1,
        "sym": True, "acts": "a8-dynamic", "loader": "bitsandbytes", "outlier_threshold": THRESHOLD,
        "quant_s": round(quant_s, 3), "quant_cpu_s": round(quant_cpu_s, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3), "peak_rss_quant_gib": round(rss_after_quant, 3),
        "bits_per_weight": round(bpw, 4),
        "size_mb": round(sum(f.stat().st_size for f in tmp.glob("*.safetensors")) / 1e6, 3),
        "quantized_layers": layers, "threads": torch.get_num_threads(),
        "versions": {"bitsandbytes": version("bitsandbytes")}, "model": str(source),
    }
    (tmp / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", type=Path, required=True,
                    help="the dense float32 copy of SmolLM2 (bench/fp_copy.py prints its directory)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    print(json.dumps(quantize(a.model, a.out, a.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
