"""The five observers of static W8A8 int8, from one calibration pass: five checkpoints for quality.py.

    .venv/bin/python bench/w8a8_observers.py --model FLOAT_DIR --work lowbit-out-bench
    .venv/bin/python bench/quality.py --recipes w8a8-int8-static-minmax,...,w8a8-int8-static-kl --reuse
    ... --preset w8a8-smoothquant-static    # the same after SmoothQuant: w8a8-smoothquant-static-<observer>

Every ``w8a8-int8-static-<observer>`` row of bench/lowbit_recipes.py is the same model (RTN int8
weights, per output row) with a different observer choosing each input group's static scale.
Instead of five processes each repeating the calibration forward (``pydoc-128x512``), this one
quantizes the weights once, feeds every input group's inputs to all five observers in one pass
(``pipeline.act_stats.observe_group_inputs``), then sets each observer's scales in turn and
saves ``WORK/lowbit/w8a8-int8-static-<observer>/`` with its ``bench.json``, the way
bench/lowbit_quantize.py does. The observers therefore see identical inputs, and ``quant_s`` of
each row is the rounding plus the whole shared calibration pass plus its own observer's
``qparams`` (the histogram observers' search), so the rows compare like for like. A preset with
a transform (``w8a8-smoothquant-static``) has it applied to the float model first, once, on the
same calibration windows (``pipeline.smoothquant_block.smooth_model``), inside the timed part, after
a rotation where the recipe has one (``w8a8-rotated-static``, ``w8a8-rotated-smoothquant-static``),
and before the online Hadamard rotation of down_proj's inputs where it has one
(``w8a8-rotated-hadamard-static``).
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
OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl")


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process's resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class FanOut:
    """One observer's interface in front of several: each sees every batch."""

    def __init__(self, observers: dict):
        self.observers = observers

    def observe(self, x) -> None:
        for obs in self.observers.values():
            obs.observe(x)


def main(argv=None) -> int:
    import torch

    import lowbit
    from lowbit.data import load_text
    from lowbit.data.windows import calibration_windows
    from lowbit.io import save
    from lowbit.observers import make_observer
    from lowbit.pipeline.act_stats import observe_group_inputs, set_input_scales
    from lowbit.algorithms.online_hadamard import OnlineHadamardConfig
    from lowbit.pipeline.online_hadamard_block import rotate_down_inputs
    from lowbit.pipeline.smoothquant_block import smooth_model
    from lowbit.pipeline.transforms import apply_model_transforms
    from lowbit.quantize import quantize_each_linear
    from lowbit.sources import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lowbit_recipes import BY_NAME

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the dense float32 copy of SmolLM2 (bench/fp_copy.py)")
    ap.add_argument("--work", type=Path, default=Path("lowbit-out-bench"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--preset", default="w8a8-int8-static",
                    choices=["w8a8-int8-static", "w8a8-smoothquant-static", "w8a8-rotated-static",
                             "w8a8-rotated-smoothquant-static", "w8a8-rotated-hadamard-static"],
                    help="the static recipe whose observers are compared (rows <preset>-<observer> of "
                         "bench/lowbit_recipes.py; w8a8-rotated-static is w8a8-int8-static after a rotation)")
    ap.add_argument("--calib-windows", type=int, default=128,
                    help="the first N windows of pydoc-128x512 (default: all 128, the protocol)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tokenizer = load_model(a.model)
    load_s = time.perf_counter() - t0
    calib = calibration_windows(tokenizer, load_text("builtin:pydoc"), 128, 512)[:a.calib_windows]
    recipes = {o: BY_NAME[f"{a.preset}-{o}"].recipe() for o in OBSERVERS}
    start, cpu_start = time.perf_counter(), time.process_time()
    apply_model_transforms(model, recipes["minmax"])  # whole-model transforms (rotate) first
    for step in recipes["minmax"].block_transforms:  # then SmoothQuant folds into the float model,
        if isinstance(step, OnlineHadamardConfig):  # and R4 rotates down_proj's weights and inputs
            rotate_down_inputs(model, step)
        else:
            smooth_model(model, calib, step)
    quantize_each_linear(model, recipes["minmax"], progress=False)
    with torch.no_grad():
        observed = observe_group_inputs(model, calib, lambda: FanOut({o: make_observer(o, "int8") for o in OBSERVERS}),
                                        progress=False)
    shared_s, shared_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    for fan in (fan for _, fan in observed):
        for obs in fan.observers.values():
            obs.qparams()  # every observer's search, before any save: the peak below is the quantization's
    peak_quant = peak_rss_gib()
    for o in OBSERVERS:
        t, c = time.perf_counter(), time.process_time()
        rows = set_input_scales([(members, fan.observers[o]) for members, fan in observed], o)
        own_s, own_cpu_s = time.perf_counter() - t, time.process_time() - c
        model.lowbit_recipe = recipes[o]
        out = a.work / "lowbit" / f"{a.preset}-{o}"
        save(model, tokenizer, out, overwrite=True)
        meta = {"tool": "lowbit", "recipe": f"{a.preset}-{o}", "model": a.model, "load_s": round(load_s, 3),
                "threads": torch.get_num_threads(), "versions": {"lowbit": lowbit.__version__},
                "quant_s": round(shared_s + own_s, 3), "quant_cpu_s": round(shared_cpu_s + own_cpu_s, 3),
                "calibration_shared_by": list(OBSERVERS), "calib_windows": len(calib), "observer_s": round(own_s, 3),
                "input_scale_median": sorted(r["input_scale"] for r in rows)[len(rows) // 2],
                # one process saves five checkpoints, and the saves raise its high-water mark:
                # the row's peak is the quantization's (load, rounding, calibration, observers)
                "peak_rss_gib": round(peak_quant, 3), "peak_rss_after_saves_gib": round(peak_rss_gib(), 3)}
        (out / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(json.dumps(meta), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
