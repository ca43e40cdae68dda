"""The quality benchmark: FP and lowbit RTN rows (and peer rows) on ``lee-512``, one command.

    .venv/bin/python bench/quality.py                      # full protocol, every lowbit recipe
    .venv/bin/python bench/quality.py --peers lowbit-out-bench/llmcompressor   # + peer rows
    .venv/bin/python bench/quality.py --recipes w4a16-rtn --max-windows 4      # quick look

Protocol (shared/BENCHMARK.md): SmolLM2-135M (float32 from the GGUF) is the FP row; each recipe
is quantized in its own process (quantization time and peak RSS are that process's) and saved;
every checkpoint is then evaluated on all ``lee-512`` windows and on ``pydoc-last24`` in
lockstep with one FP pass (KL and top-1 agreement against FP). Rows are merged into
``bench/results/quality.json`` by key and ``quality.md`` is rendered from the whole file.
A run limited with ``--max-windows`` writes elsewhere (see ``--out``), never into the
full-protocol file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_WORK = Path(os.environ.get("LOWBIT_BENCH_WORK", ROOT / "lowbit-out-bench"))
SEQLEN = 512
CALIB_WINDOWS = 24  # pydoc-last24

sys.path.insert(0, str(HERE))
import results_file  # noqa: E402
from results_file import machine  # noqa: E402
from fp_copy import save_float_copy  # noqa: E402
from checkpoints import load_lowbit, load_peer, read_meta, storage  # noqa: E402
from lowbit_recipes import BY_NAME, LOWBIT_RECIPES, row_setting  # noqa: E402


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- quantization (one process each)

def quantize_all(names: list[str], work: Path, reuse: bool, threads: int | None,
                 model_dir: Path) -> dict[str, Path]:
    """Run ``lowbit_quantize.py`` per recipe (and ``fp`` for the FP row's memory); name -> dir."""
    dirs = {}
    for name in ["fp", *names]:
        out = work / "lowbit" / name
        dirs[name] = out
        if reuse and (out / "bench.json").exists():
            log(f"reuse {out}")
            continue
        log(f"quantize lowbit {name}")
        cmd = [sys.executable, str(HERE / "lowbit_quantize.py"), "--recipe", name, "--out", str(out),
               "--model", str(model_dir)]
        if threads:
            cmd += ["--threads", str(threads)]
        out.parent.mkdir(parents=True, exist_ok=True)
        logfile = out.parent / f"{name}.log"
        with open(logfile, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"lowbit_quantize.py --recipe {name} failed; see {logfile}:\n"
                     + "\n".join(logfile.read_text().splitlines()[-15:]))
        log(logfile.read_text().strip().splitlines()[-1])
    return dirs


def peer_checkpoints(peer_dirs: list[Path]) -> dict[str, Path]:
    """Every ``<dir>/<recipe>/bench.json`` under the given peer output directories."""
    found = {}
    for d in peer_dirs:
        for meta in sorted(Path(d).glob("*/bench.json")):
            m = json.loads(meta.read_text())
            found[f"{m['tool']}:{m['recipe']}"] = meta.parent
    return found


# ---------------------------------------------------------------- rows

def row_from(meta: dict, setting: dict, lee: dict, calib: dict, store: dict | None) -> dict:
    row = dict(setting)
    row.update(ppl=lee["ppl"], ppl_calib=calib["ppl"], kl=lee["kl"], top1=lee["top1"],
               kl_calib=calib["kl"], top1_calib=calib["top1"],
               quant_s=meta.get("quant_s"), quant_cpu_s=meta.get("quant_cpu_s"),
               peak_rss_gib=meta.get("peak_rss_gib"))
    row.update(store or {})
    return row


def peer_setting(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("tool", "recipe", "method", "bits", "group_size", "sym", "acts")} \
        | {"kv_cache": None, "seqlen": SEQLEN}


def header(lee_windows, calib_windows, peer_versions: dict) -> dict:
    import torch
    import transformers

    import lowbit

    n, seqlen = lee_windows.shape
    return {
        "model": "smollm2-135m", "calib": "pydoc-128x512", "eval": "lee-512",
        "tokens": int(n * (seqlen - 1)), "windows": int(n), "calib_windows": int(calib_windows.shape[0]),
        "machine": machine(),
        "versions": {"lowbit": lowbit.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "compressed-tensors": version("compressed-tensors"), **peer_versions},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--recipes", default="all",
                    help=f"comma-separated lowbit recipes, 'all' (default) or 'none': {', '.join(BY_NAME)}")
    ap.add_argument("--peers", type=Path, action="append", default=[],
                    help="a peer's output directory (<dir>/<recipe>/bench.json + checkpoint); repeatable")
    ap.add_argument("--max-windows", type=int, default=None,
                    help="evaluate only the first N lee-512 windows and the last min(N, 24) pydoc ones")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/results/quality.json; with --max-windows "
                         "WORK/quality-quick.json)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where checkpoints go")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse lowbit checkpoints already in WORK (their bench.json) instead of requantizing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args(argv)
    names = [] if a.recipes == "none" else list(BY_NAME) if a.recipes == "all" else a.recipes.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    a.names = names
    if a.out is None:
        a.out = results_file.QUALITY_JSON if a.max_windows is None else a.work / "quality-quick.json"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    from lowbit.data import eval_windows, load_text
    from lowbit.sources import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    peers = peer_checkpoints(a.peers)
    if a.peers and not peers:
        sys.exit(f"no peer checkpoints (*/bench.json) under {', '.join(map(str, a.peers))}")
    log("load the FP model (SmolLM2 GGUF, float32) and the texts")
    fp, tokenizer = load_model("builtin:smollm2-135m")
    model_dir = save_float_copy(fp, tokenizer, a.work)
    t_quant = time.perf_counter()
    dirs = quantize_all(a.names, a.work, a.reuse, a.threads, model_dir)
    t_quant = time.perf_counter() - t_quant
    lee = eval_windows(tokenizer, load_text("builtin:lee"), SEQLEN, max_windows=a.max_windows)
    calib_n = CALIB_WINDOWS if a.max_windows is None else min(a.max_windows, CALIB_WINDOWS)
    pydoc = eval_windows(tokenizer, load_text("builtin:pydoc"), SEQLEN, max_windows=calib_n, last=True)

    candidates, settings, metas, stores = {}, {}, {}, {}
    for name in a.names:
        key = f"lowbit:{name}"
        log(f"load {key} from {dirs[name]}")
        candidates[key] = load_lowbit(dirs[name])
        settings[key], metas[key], stores[key] = row_setting(BY_NAME[name]), read_meta(dirs[name]), storage(dirs[name])
    peer_versions, failed_rows = {}, []
    for key, path in peers.items():
        meta = read_meta(path)
        if meta.get("error"):  # the peer refused or could not finish: a row with its reason
            log(f"{key} did not run: {meta['error']}")
            failed_rows.append(peer_setting(meta) | {"error": meta["error"], "peak_rss_gib": meta.get("peak_rss_gib")})
            peer_versions.update(meta.get("versions", {}))
            continue
        log(f"load {key} from {path}")
        candidates[key] = load_peer(path)
        metas[key] = read_meta(path)
        settings[key], stores[key] = peer_setting(metas[key]), storage(path)
        peer_versions.update(metas[key].get("versions", {}))

    log(f"evaluate FP + {len(candidates)} models in lockstep: lee-512 {tuple(lee.shape)}, "
        f"pydoc-last24 {tuple(pydoc.shape)}")
    t_eval = time.perf_counter()
    on_lee = evaluate_both(fp, candidates, lee, "lee-512")
    on_pydoc = evaluate_both(fp, candidates, pydoc, "pydoc-last24")
    t_eval = time.perf_counter() - t_eval
    for key, model in candidates.items():
        stores[key] = {**(stores[key] or {}), **outlier_columns(key, model)}

    fp_meta = read_meta(dirs["fp"])
    fp_row = {"tool": "lowbit", "recipe": "fp", "method": "fp", "bits": None, "group_size": None,
              "sym": None, "acts": None, "kv_cache": None, "seqlen": SEQLEN,
              "ppl": on_lee[None]["ppl"], "ppl_calib": on_pydoc[None]["ppl"], "kl": None, "top1": None,
              "bits_per_weight": 32.0, "size_mb": fp_meta.get("size_mb"), "quant_s": None,
              "peak_rss_gib": fp_meta.get("peak_rss_gib")}
    rows = [fp_row] + [row_from(metas[k], settings[k], on_lee[k], on_pydoc[k], stores[k])
                       for k in candidates] + failed_rows
    doc = results_file.merge(header(lee, pydoc, peer_versions), rows, a.out)
    md = results_file.write_markdown(doc, a.out)
    notes = failed_runs(doc)
    if notes:
        md.write_text(md.read_text() + notes)
    print(results_file.render(doc) + notes)
    log(f"wrote {a.out} and {md}; quantization phase {t_quant:.0f}s, evaluation {t_eval:.0f}s, "
        f"total {time.perf_counter() - t_start:.0f}s")
    return 0


def failed_runs(doc: dict) -> str:
    """Markdown for the rows that have an ``error`` instead of measurements (a peer that refused
    to run here): they stay in the table with empty cells, and their reasons are listed below it."""
    failed = [r for r in doc.get("rows", []) if r.get("error")]
    if not failed:
        return ""
    lines = ["", "## Runs that did not finish here", "", "| tool | recipe | method | reason |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r.get('tool')} | `{r.get('recipe')}` | {r.get('method')} | {r['error']} |" for r in failed]
    return "\n".join(lines) + "\n"


def outlier_columns(key: str, model) -> dict:
    """LLM.int8 rows: the fraction of input columns each layer multiplied in float over the whole
    evaluation (both texts), logged per layer; the row keeps the mean and the largest."""
    from lowbit.modules.llm_int8_linear import outlier_fractions

    fractions = outlier_fractions(model)
    if not fractions:
        return {}
    for name, f in fractions.items():
        log(f"{key} outlier columns {name}: {f:.4f}")
    values = list(fractions.values())
    return {"outlier_fraction_mean": round(sum(values) / len(values), 5),
            "outlier_fraction_max": round(max(values), 5)}


def evaluate_both(fp, candidates, windows, label):
    from lockstep import evaluate_lockstep

    return evaluate_lockstep(fp, candidates, windows, label=label)


if __name__ == "__main__":
    sys.exit(main())
