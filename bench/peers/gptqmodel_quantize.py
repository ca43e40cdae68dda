"""Quantize SmolLM2 with GPTQModel's GPTQ, one recipe per process; runs in the peer's own venv.

Never imports lowbit (this venv does not have it). For one recipe of ``PEER_RECIPES`` it loads
the dense float32 copy of the model (bench/fp_copy.py) through ``GPTQModel.load``, times
GPTQModel's ``quantize`` on lowbit's ``pydoc-128x512`` calibration windows (the same windows
llmcompressor_quantize.py builds, from the same function), saves the checkpoint with GPTQModel's
own ``save`` (GPTQ layout, ``quant_method: gptq``), and writes ``bench.json`` beside it with the
fields llmcompressor_quantize.py writes. Evaluation happens elsewhere, in lowbit's venv.

    python gptqmodel_quantize.py --list
    python gptqmodel_quantize.py --recipe w4a16-gptq --model FP_DIR --out DIR [--calib-samples 8]

GPTQModel's defaults are kept (damp 0.05, group-aware act reordering, no desc_act, true
sequential, GPTQ v1 layout) except the dtype: GPTQModel picks bfloat16 on a CPU, the protocol
quantizes the float32 model, so float32 is asked for explicitly.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# GPTQModel 7.6.0 sizes its CPU thread pool at (cores + 1) // 2 workers but always asks for a
# 2-worker model-loader pool inside it, so on a 2-core machine it stops with "Virtual pool
# 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1". Its own override gives
# the pool the 2 workers it needs (Python threads; torch's thread count is set apart).
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# One calibration set for every peer: the windows llm-compressor is given, and its helpers for
# peak memory and failure records (stdlib only at import time).
from llmcompressor_quantize import _raise_timeout, peak_rss_gib, pydoc_calibration  # noqa: E402

TOOL = "gptqmodel"
# checkpoints.load_peer reads this: a GPTQ-layout checkpoint, loaded by exact integer translation.
LOADER = "gptq"


@dataclass(frozen=True)
class PeerRecipe:
    """One GPTQModel run, named and described as the results schema and llm-compressor's rows are."""

    name: str
    bits: int
    group_size: int
    sym: bool
    method: str = "gptq"
    acts: str = "a16"


# The GPTQ rows of llmcompressor_quantize.py: W4 and W3, group 64, asymmetric and symmetric.
PEER_RECIPES = [
    PeerRecipe("w4a16-gptq", 4, 64, False),
    PeerRecipe("w3a16-gptq", 3, 64, False),
    PeerRecipe("w4a16-gptq-sym", 4, 64, True),
    PeerRecipe("w3a16-gptq-sym", 3, 64, True),
]
BY_NAME = {r.name: r for r in PEER_RECIPES}


def versions() -> dict:
    from importlib.metadata import version

    return {"gptqmodel": version("gptqmodel"),
            "gptqmodel.transformers": version("transformers"),
            "gptqmodel.torch": version("torch")}


def calibration_rows(tokenizer, n_samples: int) -> list[dict]:
    """The first ``n_samples`` windows of pydoc-128x512 (the window starts come from one seeded
    sequence, so 8 samples are the first 8 of the 128), as GPTQModel's list of id dicts."""
    ds = pydoc_calibration(tokenizer, n_samples=n_samples)
    return [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in ds]


def failed(recipe: PeerRecipe, out: Path, error: BaseException, seconds: float, load_s: float,
           threads: int) -> dict:
    """bench.json with the error and no checkpoint; quality.py renders it as a row with its reason."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    meta = {"tool": TOOL, "recipe": recipe.name, "method": recipe.method, "bits": recipe.bits,
            "group_size": recipe.group_size, "sym": recipe.sym, "acts": recipe.acts,
            "error": f"{type(error).__name__}: {first_line}"[:300], "failed_after_s": round(seconds, 3),
            "load_s": round(load_s, 3), "threads": threads, "peak_rss_gib": round(peak_rss_gib(), 3),
            "versions": versions()}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def quantize(recipe: PeerRecipe, source: Path, out: Path, threads: int | None, n_samples: int,
             timeout: int | None = None) -> dict:
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    config = QuantizeConfig(bits=recipe.bits, group_size=recipe.group_size, sym=recipe.sym, device="cpu")
    t0 = time.perf_counter()
    model = GPTQModel.load(str(source), config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    load_s = time.perf_counter() - t0
    calib = calibration_rows(tokenizer, n_samples)
    start, cpu_start = time.perf_counter(), time.process_time()
    if timeout:
        import signal

        signal.signal(signal.SIGALRM, _raise_timeout)
        signal.alarm(timeout)
    try:
        model.quantize(calib, batch_size=1, tokenizer=tokenizer)
    except Exception as e:  # the peer's own failure is a result of the benchmark, not a crash
        return failed(recipe, out, e, time.perf_counter() - start, load_s, torch.get_num_threads())
    finally:
        if timeout:
            signal.alarm(0)
    quant_s = time.perf_counter() - start
    quant_cpu_s = time.process_time() - cpu_start
    rss_after_quant = peak_rss_gib()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp))
    tokenizer.save_pretrained(tmp)
    meta = {"tool": TOOL, "recipe": recipe.name, "method": recipe.method, "bits": recipe.bits,
            "group_size": recipe.group_size, "sym": recipe.sym, "acts": recipe.acts,
            "quant_s": round(quant_s, 3), "quant_cpu_s": round(quant_cpu_s, 3), "load_s": round(load_s, 3),
            "peak_rss_gib": round(peak_rss_gib(), 3), "peak_rss_quant_gib": round(rss_after_quant, 3),
            "threads": torch.get_num_threads(), "versions": versions(), "model": str(source),
            "calib_windows": len(calib), "loader": LOADER}
    (tmp / "bench.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="print the recipe table as JSON and exit")
    ap.add_argument("--recipe", choices=sorted(BY_NAME))
    ap.add_argument("--model", type=Path, help="the dense float32 copy of SmolLM2 (bench/fp_copy.py)")
    ap.add_argument("--out", type=Path, help="checkpoint directory to write")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=128,
                    help="pydoc windows to calibrate on (128 is the protocol; fewer only for smoke tests)")
    ap.add_argument("--timeout", type=int, default=None,
                    help="record the run as failed after this many seconds")
    a = ap.parse_args(argv)
    if a.list:
        print(json.dumps([vars(r) for r in PEER_RECIPES]))
        return 0
    if not (a.recipe and a.model and a.out):
        ap.error("--recipe, --model and --out are required")
    if not (a.model / "config.json").is_file():
        ap.error(f"--model {a.model}: not a model directory (make it with bench/fp_copy.py)")
    meta = quantize(BY_NAME[a.recipe], a.model, a.out, a.threads, a.calib_samples, a.timeout)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
