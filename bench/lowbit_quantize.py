"""Quantize SmolLM2 with lowbit for one benchmark recipe and save the checkpoint (one process per recipe).

    python bench/lowbit_quantize.py --recipe w4a16-rtn --out DIR
    python bench/lowbit_quantize.py --recipe fp --out DIR     # load only: the FP row's memory
    python bench/lowbit_quantize.py --model FLOAT_DIR ...     # the same float model, saved dense

``--model`` defaults to the built-in SmolLM2 GGUF. quality.py passes a dense float32 copy of
that very model (saved once): dequantizing the GGUF costs minutes on a busy 2-core machine,
per process, and yields bit-identical weights.

Mirrors ``peers/llmcompressor_quantize.py`` so that both tools are timed and measured alike:
load the float model, time the quantization alone, save the checkpoint (lowbit picks
compressed-tensors where it can), and write ``bench.json`` beside it with the time and the
process's peak RSS. A fresh process per recipe keeps each peak RSS its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "builtin:smollm2-135m"


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    import torch

    import lowbit
    from lowbit.eval import model_size_mb
    from lowbit.io import save
    from lowbit.sources import load_model

    from lowbit_recipes import BY_NAME

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True, choices=["fp", *BY_NAME])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=MODEL, help=f"model source (default {MODEL})")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    model, tokenizer = load_model(a.model)
    load_s = time.perf_counter() - t0
    meta = {"tool": "lowbit", "recipe": a.recipe, "model": a.model, "load_s": round(load_s, 3),
            "threads": torch.get_num_threads(), "versions": {"lowbit": lowbit.__version__}}
    if a.recipe == "fp":
        meta.update(quant_s=None, size_mb=round(model_size_mb(model), 3))
    else:
        bench_recipe = BY_NAME[a.recipe]
        recipe = bench_recipe.recipe()
        calib = None
        if recipe.needs_calibration:
            # The calibration protocol of shared/BENCHMARK.md (pydoc-128x512), made before the clock.
            from lowbit.data import load_text
            from lowbit.data.windows import calibration_windows
            calib = calibration_windows(tokenizer, load_text("builtin:pydoc"), 128, 512)
        start, cpu_start = time.perf_counter(), time.process_time()
        report = lowbit.quantize_model(model, recipe, calib=calib, progress=False,
                                       **bench_recipe.pipeline_options()) if calib is not None \
            else lowbit.quantize_model(model, recipe, progress=False)
        meta["quant_s"] = round(time.perf_counter() - start, 3)
        # CPU seconds too: on a shared machine the wall clock also measures the neighbours.
        meta["quant_cpu_s"] = round(time.process_time() - cpu_start, 3)
        meta["peak_rss_quant_gib"] = round(peak_rss_gib(), 3)
        if report.calibration_dtype:
            meta["calibration_dtype"] = report.calibration_dtype
        meta["clip_ratio_mean"] = _mean([r.get("clip_ratio_mean") for r in report.layers])
        if report.steps:  # transforms' statistics (AWQ: alpha, clip ratios, loss before/after)
            meta["steps"] = report.steps
        save(model, tokenizer, a.out, overwrite=True)
    meta["peak_rss_gib"] = round(peak_rss_gib(), 3)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))
    return 0


def _mean(values):
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


if __name__ == "__main__":
    sys.exit(main())
