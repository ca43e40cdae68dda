"""The KV-cache benchmark: SmolLM2's float cache beside lowbit's int8/int4 caches and transformers'
own QuantizedCache, with the cache in the loop, on lee windows of 512 and 2048 tokens. One command.

    .venv/bin/python bench/kv_cache.py                           # full protocol
    .venv/bin/python bench/kv_cache.py --max-windows 2           # quick look (own results file)
    .venv/bin/python bench/kv_cache.py --seqlens 2048 --chunk 64

Protocol (docs/KV-CACHE.md): the float SmolLM2-135M (float32 from the GGUF, as in the quality
benchmark); the lee text (shared/BENCHMARK.md's `lee-512` rules) cut into non-overlapping windows
of each --seqlens length; every window is fed in chunks of --chunk tokens through a fresh cache
of each kind in lockstep with the float cache (`lowbit.eval.kv_eval.evaluate_kv`), so the keys
and values of earlier chunks are read back from the cache under test. Rows carry PPL, ΔPPL, KL and
top-1 against the float cache, bytes per token measured from the cache's tensors, and the share of
attention (query, key) pairs whose key came from quantized storage.

Peers: transformers' `QuantizedCache` with the quanto backend (`optimum-quanto`, 4 bits; quanto
has no 8-bit KV) and the HQQ backend (`hqq`, 4 and 8 bits), group 64, residual 128, wherever the
packages import (rows of a missing one are skipped with a message). Both group 64 consecutive
values, one token's head, as lowbit does: quanto at transformers' default axis 0; HQQ at axis 1,
its own recommended setting, since HQQ's axis 0 (transformers' default) reshapes the flattened
cache to (64, -1) and groups values strided across tokens and heads (+42% PPL at 2048 here).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import results_file  # noqa: E402

KV_JSON = results_file.RESULTS_DIR / "kv-cache.json"
DEFAULT_WORK = Path(os.environ.get("LOWBIT_BENCH_WORK", ROOT / "lowbit-out-bench"))
# Bars (issue 9), per row: ΔPPL below, bytes per quantized token this many times below float16's;
# int4 (g64, residual 128) also no higher PPL than transformers' QuantizedCache at 4 bits.
BAR_SEQLEN = 2048
BARS = {"kv-int8-g64-r0": (0.5, 1.9), "kv-int4-g64-r128": (3.0, 3.5)}


def log(msg: str) -> None:
    print(f"[kv-cache {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def settings() -> list[dict]:
    """Every cache of the table: lowbit's, then the peers that import here."""
    rows = [
        {"tool": "lowbit", "recipe": "kv-int8-g64-r0", "backend": "lowbit", "name": "int8",
         "group": 64, "residual": 0, "keys": "token"},
        {"tool": "lowbit", "recipe": "kv-int4-g64-r128", "backend": "lowbit", "name": "int4",
         "group": 64, "residual": 128, "keys": "token"},
        {"tool": "lowbit", "recipe": "kv-int4-g64-r128-kivi", "backend": "lowbit", "name": "int4",
         "group": 64, "residual": 128, "keys": "channel"},
        # No float window at all: every earlier chunk is read back quantized (the worst case).
        {"tool": "lowbit", "recipe": "kv-int4-g64-r0", "backend": "lowbit", "name": "int4",
         "group": 64, "residual": 0, "keys": "token"},
    ]
    if _has("optimum.quanto"):
        rows.append({"tool": "transformers", "recipe": "quantized-cache-quanto-int4", "backend": "quanto",
                     "name": "int4", "group": 64, "residual": 128, "keys": "token", "axis": 0})
    else:
        log("optimum-quanto not installed: no quanto rows (.venv/bin/pip install optimum-quanto)")
    if _has("hqq"):
        for bits in (4, 8):
            rows.append({"tool": "transformers", "recipe": f"quantized-cache-hqq-int{bits}", "backend": "hqq",
                         "name": f"int{bits}", "group": 64, "residual": 128, "keys": "token", "axis": 1})
    else:
        log("hqq not installed: no HQQ rows (.venv/bin/pip install hqq)")
    return rows


def factory(s: dict):
    """``model -> cache`` for one setting."""
    if s["backend"] == "lowbit":
        from lowbit.modules.kv_cache import QuantizedKVCache, kv_spec
        spec = kv_spec(s["name"], s["group"], s["residual"], s["keys"])
        return lambda m: QuantizedKVCache(m.config, spec)
    from transformers import QuantizedCache
    bits = int(s["name"].removeprefix("int"))
    return lambda m: QuantizedCache(s["backend"], m.config, nbits=bits, q_group_size=s["group"],
                                    residual_length=s["residual"], axis_key=s["axis"], axis_value=s["axis"])


def row_of(s: dict | None, result, base, windows, seconds: float) -> dict:
    mem = result.memory
    row = {"tool": s["tool"] if s else "lowbit", "recipe": s["recipe"] if s else "fp", "method": "fp",
           "bits": None, "group_size": None, "sym": None, "acts": None,
           "ppl": result.ppl, "ppl_calib": None, "kl": result.kl, "top1": result.top1,
           "bits_per_weight": 32.0, "size_mb": None, "quant_s": None, "peak_rss_gib": None,
           "kv_cache": s["name"] if s else None, "seqlen": result.seqlen,
           "kv_backend": s["backend"] if s else None, "kv_group_size": s["group"] if s else None,
           "kv_residual": s["residual"] if s else None, "kv_keys": s["keys"] if s else None,
           "kv_peer_axis": s.get("axis") if s else None,
           "kv_chunk": result.chunk, "windows": int(windows.shape[0]), "tokens": result.tokens,
           "delta_ppl_pct": 100 * (result.ppl / base.ppl - 1),
           "kv_bytes_per_token": mem.bytes_per_token, "kv_saving": mem.saving,
           "kv_quantized_bytes_per_token": mem.quantized_bytes_per_token,
           "kv_quantized_saving": mem.quantized_saving,
           "kv_quantized_key_share": result.quantized_key_share, "forward_s": result.seconds,
           "eval_s": round(seconds, 1)}
    return row


def header(chunk: int) -> dict:
    import torch
    import transformers

    import lowbit
    from results_file import machine

    versions = {"lowbit": lowbit.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__}
    for pkg in ("optimum-quanto", "hqq"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"model": "smollm2-135m", "eval": "lee", "chunk": chunk, "machine": machine(),
            "versions": versions, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ---------------------------------------------------------------- Markdown

def _f(v, spec=".2f", suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def bars(rows: list[dict]) -> list[str]:
    """Each lowbit row at the bar's window length against its bars and the 4-bit peers."""
    out = []
    at = [r for r in rows if r.get("seqlen") == BAR_SEQLEN]
    peers4 = [r for r in at if r["tool"] != "lowbit" and r.get("kv_cache") == "int4"]
    for r in at:
        if r["tool"] != "lowbit" or r.get("recipe") not in BARS:
            continue
        max_delta, min_saving = BARS[r["recipe"]]
        checks = [(f"ΔPPL {r['delta_ppl_pct']:+.2f}% < {max_delta}%", r["delta_ppl_pct"] < max_delta),
                  (f"saving {_f(r['kv_quantized_saving'])}× ≥ {min_saving}×",
                   (r["kv_quantized_saving"] or 0) >= min_saving)]
        if r["kv_cache"] == "int4":
            checks += [(f"PPL ≤ {p['recipe']} ({p['ppl']:.3f})", r["ppl"] <= p["ppl"]) for p in peers4]
        for text, ok in checks:
            out.append(f"| `{r['recipe']}` | {text} | {'pass' if ok else 'MISS'} |")
    return out


def render(doc: dict) -> str:
    v = doc.get("versions", {})
    order = {"lowbit": 0, "transformers": 1}
    rows = sorted(doc.get("rows", []), key=lambda r: (r.get("seqlen") or 0, r.get("kv_cache") is not None,
                                                      order.get(r.get("tool"), 9), -int((r.get("kv_cache") or "int0")[3:]),
                                                      r.get("recipe") or ""))
    lines = [
        f"# KV cache: `{doc.get('model')}`, lee windows, the cache in the loop",
        "",
        f"- each window fed in chunks of {doc.get('chunk')} tokens through a fresh cache, in lockstep "
        "with the float cache (transformers DynamicCache, float32); ΔPPL, KL and top-1 against it",
        f"- machine: {doc.get('machine')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())),
        f"- date: {doc.get('date')}",
        "",
        "B/token: bytes the cache holds at the end of a window per token (keys + values, all 30 layers, "
        "float32 residual included), against the float32 cache (saving). B/quantized token: what each "
        "further token costs once quantized, floating-point scales counted at float16, against a float16 "
        "cache's 23,040 B/token. Keys read quantized: share of causal (query, key) pairs whose key came "
        "from quantized storage.",
        "",
        "| seqlen | windows | tool | recipe | KV | group | residual | keys | PPL | ΔPPL | KL | top-1 "
        "| B/token | saving | B/quantized token | vs float16 | keys read quantized | forward s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- |",
    ]
    for r in rows:
        fp = r.get("kv_cache") is None
        lines.append("| " + " | ".join([
            str(r.get("seqlen")), str(r.get("windows")), r.get("tool") or "—", f"`{r.get('recipe')}`",
            f"{r.get('kv_backend')} {r.get('kv_cache')}" if not fp else "float",
            _f(r.get("kv_group_size"), "d"), _f(r.get("kv_residual"), "d"), r.get("kv_keys") or "—",
            _f(r.get("ppl"), ".3f"), "—" if fp else _f(r.get("delta_ppl_pct"), "+.2f", "%"),
            _f(r.get("kl"), ".5f"), "—" if r.get("top1") is None else f"{100 * r['top1']:.1f}%",
            _f(r.get("kv_bytes_per_token"), ",.0f"), _f(r.get("kv_saving"), ".2f", "×"),
            _f(r.get("kv_quantized_bytes_per_token"), ",.0f"), _f(r.get("kv_quantized_saving"), ".2f", "×"),
            "—" if r.get("kv_quantized_key_share") is None else f"{100 * r['kv_quantized_key_share']:.1f}%",
            _f(r.get("forward_s"), ".0f"),
        ]) + " |")
    checks = bars(rows)
    if checks:
        lines += ["", f"## Bars at {BAR_SEQLEN} tokens (issue 9)", "", "| row | check | result |",
                  "| --- | --- | --- |", *checks]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seqlens", default="512,2048", help="comma-separated window lengths (default 512,2048)")
    ap.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows per length")
    ap.add_argument("--chunk", type=int, default=32, help="tokens per forward call (default 32)")
    ap.add_argument("--only", default=None,
                    help="comma-separated recipes to run (the float cache always runs); default all")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/results/kv-cache.json; with --max-windows "
                         "WORK/kv-cache-quick.json)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args(argv)
    a.seqlens = [int(s) for s in a.seqlens.split(",")]
    if a.out is None:
        a.out = KV_JSON if a.max_windows is None else DEFAULT_WORK / "kv-cache-quick.json"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from lowbit.data import eval_windows, load_text
    from lowbit.eval.kv_eval import evaluate_kv
    from lowbit.sources import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    log("load the FP model (SmolLM2 GGUF, float32) and the lee text")
    fp, tokenizer = load_model("builtin:smollm2-135m")
    text = load_text("builtin:lee")
    caches = settings()
    if a.only:
        wanted = set(a.only.split(","))
        unknown = wanted - {s["recipe"] for s in caches}
        if unknown:
            sys.exit(f"unknown recipe(s) {', '.join(sorted(unknown))} "
                     f"(known: {', '.join(s['recipe'] for s in caches)})")
        caches = [s for s in caches if s["recipe"] in wanted]
    rows = []
    for seqlen in a.seqlens:
        windows = eval_windows(tokenizer, text, seqlen, max_windows=a.max_windows)
        log(f"seqlen {seqlen}: {windows.shape[0]} windows, chunks of {a.chunk}, float cache + "
            f"{len(caches)} caches in lockstep")
        t0 = time.perf_counter()
        base, results = evaluate_kv(fp, windows, {s["recipe"]: factory(s) for s in caches}, chunk=a.chunk,
                                    progress=False)
        seconds = time.perf_counter() - t0
        rows.append(row_of(None, base, base, windows, seconds))
        rows += [row_of(s, results[s["recipe"]], base, windows, seconds) for s in caches]
        for r in rows[-len(caches) - 1:]:
            log(f"  {r['recipe']:30} ppl {r['ppl']:.4f} ({r['delta_ppl_pct']:+.2f}%) "
                f"B/quantized token {_f(r['kv_quantized_bytes_per_token'], ',.0f')} "
                f"keys read quantized {_f(r['kv_quantized_key_share'], '.3f')}")
    doc = results_file.merge(header(a.chunk), rows, a.out)
    md = a.out.with_suffix(".md")
    md.write_text(render(doc))
    print(render(doc))
    log(f"wrote {a.out} and {md} in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
