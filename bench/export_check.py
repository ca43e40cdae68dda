"""Exports, reloaded by the libraries that consume them, against lowbit's own model: one command.

    .venv/bin/python bench/export_check.py                       # SmolLM2, w4a16-rtn, all lee-512 windows
    .venv/bin/python bench/export_check.py --max-windows 4       # quick look (written elsewhere)
    .venv/bin/python bench/export_check.py --checkpoint lowbit-out/smollm2-135m-w4a16-gptq

Three exports of the same float model (``--model``, default the built-in SmolLM2-135M):

- compressed-tensors from the recipe (``--preset``/``--recipe``, default ``w4a16-rtn``; or an
  existing checkpoint with ``--checkpoint``), reloaded with transformers + compressed-tensors;
- GGUF Q4_0 from an RTN int4 sym g32 quantization with float16 scales (Q4_0's block), and
- GGUF Q8_0 from an RTN int8 sym g32 quantization with float16 scales, both reloaded with
  transformers' GGUF loader.

Each reloaded model is evaluated on ``lee-512`` in lockstep with lowbit's model it came from
(``lowbit.eval.evaluate(export, windows, reference=lowbit_model)``): the row gives both PPLs,
their ratio and the KL between them. Bars: compressed-tensors within 0.1% of lowbit's PPL, GGUF
within 0.5%. Results: ``bench/results/export.json`` and ``export.md``; a run limited with
``--max-windows`` writes ``WORK/export-quick.json`` instead (``--out`` to choose).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "export.json"
DEFAULT_WORK = Path(os.environ.get("LOWBIT_BENCH_WORK", ROOT / "lowbit-out-bench"))
sys.path.insert(0, str(HERE))
from results_file import machine  # noqa: E402
SEQLEN = 512
BARS = {"compressed-tensors": 0.001, "gguf": 0.005}


def log(msg: str) -> None:
    print(f"[export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def versions() -> dict:
    return {name: version(name) for name in ("lowbit", "torch", "transformers", "compressed-tensors", "gguf")}


def quantized(float_model, recipe, tokenizer):
    import copy

    from lowbit.quantize import quantize_model

    calib = None
    if recipe.needs_calibration:
        # BENCHMARK.md's calibration protocol (pydoc-128x512), as bench/lowbit_quantize.py uses it.
        from lowbit.data.text import load_text
        from lowbit.data.windows import calibration_windows
        calib = calibration_windows(tokenizer, load_text("builtin:pydoc"), 128, 512)
    model = copy.deepcopy(float_model)
    quantize_model(model, recipe, calib=calib, progress=False)
    return model


def gguf_recipe(bits: int):
    from lowbit.algorithms.rtn_step import RTNConfig
    from lowbit.formats import FormatSpec
    from lowbit.recipes import Recipe

    spec = FormatSpec(bits=bits, sym=True, group_size=32, scale_dtype="float16")
    return Recipe(format=spec, steps=(RTNConfig(clip=None),), name=f"w{bits}a16-rtn-g32-sym-f16")


def reload_gguf(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowbit.io.gguf_export import GGUF_FILE

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)


def reload_ct(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    # quant_method "compressed-tensors": transformers' own quantizer, not lowbit's.
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval(), None


def check_pair(name, own, export_dir, reload, windows, text, text_ids, consumer, quant_label):
    from lowbit.eval import checkpoint_size_mb, evaluate

    log(f"{name}: reload through {consumer}")
    exported, tokenizer = reload(export_dir)
    tokenizer_match = None
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        tokenizer_match = ids == text_ids
    start = time.perf_counter()
    r = evaluate(exported, windows, reference=own, progress=False)
    ratio = r.ppl / r.ref_ppl
    fmt = "gguf" if name.startswith("gguf") else name
    row = {"export": name, "quantization": quant_label, "consumer": consumer,
           "ppl_lowbit": round(r.ref_ppl, 4), "ppl_export": round(r.ppl, 4), "ratio": round(ratio, 6),
           "kl": r.kl, "top1": r.top1, "size_mb": round(checkpoint_size_mb(export_dir), 2),
           "bar": BARS[fmt], "pass": abs(ratio - 1) <= BARS[fmt], "tokenizer_match": tokenizer_match,
           "eval_s": round(time.perf_counter() - start, 1)}
    log(f"{name}: lowbit {r.ref_ppl:.4f}, export {r.ppl:.4f}, ratio {ratio:.6f}")
    del exported
    gc.collect()
    return row


def render(doc: dict) -> str:
    lines = ["# Exports reloaded by their consumers", "",
             f"- model: `{doc['model']}`; evaluation: `{doc['eval']}`, {doc['windows']} windows, "
             f"{doc['tokens']} predicted tokens",
             f"- machine: {doc['machine']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()),
             f"- date: {doc['date']}; command: `{doc['command']}`", "",
             "| export | quantization | reloaded with | PPL lowbit | PPL export | ratio | KL | bar | pass |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        lines.append(f"| {r['export']} | {r['quantization']} | {r['consumer']} | {r['ppl_lowbit']:.4f} | "
                     f"{r['ppl_export']:.4f} | {r['ratio']:.6f} | {r['kl']:.2e} | ±{100 * r['bar']:.1f}% | "
                     f"{'yes' if r['pass'] else 'NO'} |")
    lines += ["", "PPL lowbit is lowbit's own quantized model, PPL export the file reloaded by the consuming "
              "library, on the same windows; KL is KL(lowbit ‖ export) per token.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--preset", default="w4a16-rtn")
    ap.add_argument("--recipe", type=Path, help="recipe YAML instead of --preset")
    ap.add_argument("--checkpoint", type=Path, help="an existing lowbit checkpoint to export instead of quantizing")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON [default: bench/results/export.json; WORK/export-quick.json with --max-windows]")
    a = ap.parse_args(argv)
    out = a.out or (RESULTS if a.max_windows is None else a.work / "export-quick.json")

    from lowbit.data.text import lee_text
    from lowbit.data.windows import eval_windows, token_ids
    from lowbit.io import load, save
    from lowbit.recipes.build import build_recipe
    from lowbit.sources import load_model, resolve_source

    text = lee_text()
    log(f"load {a.model}")
    float_model, tokenizer = load_model(a.model)
    text_ids = token_ids(tokenizer, text).tolist()
    windows = eval_windows(tokenizer, text, SEQLEN, max_windows=a.max_windows)
    source = resolve_source(a.model)
    work = a.work / "export"
    rows = []

    # compressed-tensors
    if a.checkpoint:
        log(f"load checkpoint {a.checkpoint}")
        own, _ = load(a.checkpoint)
        label = f"checkpoint {a.checkpoint.name}"
    else:
        recipe = build_recipe(preset=None if a.recipe else a.preset, recipe_file=str(a.recipe) if a.recipe else None)
        log(f"quantize {recipe.name}")
        own = quantized(float_model, recipe, tokenizer)
        label = f"{recipe.name} ({recipe.format.label()})"
    ct_dir = save(own, tokenizer, work / "compressed-tensors", format="compressed-tensors", overwrite=True)
    rows.append(check_pair("compressed-tensors", own, ct_dir, reload_ct, windows, text, text_ids,
                           "transformers + compressed-tensors", label))
    del own
    gc.collect()

    # GGUF Q4_0 and Q8_0
    for bits, qtype in ((4, "Q4_0"), (8, "Q8_0")):
        recipe = gguf_recipe(bits)
        log(f"quantize {recipe.name}")
        own = quantized(float_model, recipe, tokenizer)
        if source.kind == "gguf":
            own.lowbit_gguf_source = source.path  # the tokenizer fields are copied from the source file
        gguf_dir = save(own, tokenizer, work / f"gguf-{qtype}", format="gguf", overwrite=True)
        rows.append(check_pair(f"gguf {qtype}", own, gguf_dir, reload_gguf, windows, text, text_ids,
                               "transformers GGUF loader", f"{recipe.format.label()} f16 scales"))
        del own
        gc.collect()

    doc = {"model": a.model, "eval": "lee-512", "windows": int(windows.shape[0]),
           "tokens": int(windows.shape[0] * (SEQLEN - 1)), "machine": machine(), "versions": versions(),
           "date": dt.date.today().isoformat(),
           "command": "bench/export_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(doc))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    print(render(doc))
    if not all(r["pass"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
