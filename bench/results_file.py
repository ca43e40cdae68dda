"""The quality results file: merge rows into ``bench/results/quality.json`` and render ``quality.md``.

One schema for every quality benchmark (shared/BENCHMARK.md, "Results files"). Rows are merged by
key, so a benchmark never drops the rows another one wrote; the Markdown is always rendered from
the whole JSON, never from one run's rows.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUALITY_JSON = RESULTS_DIR / "quality.json"

# What makes two rows "the same measurement": a later run of it replaces the earlier one.
ROW_KEY = ("tool", "recipe", "acts", "kv_cache", "seqlen")
# Header fields that must agree before rows are put in one table (else the numbers don't compare).
PROTOCOL_FIELDS = ("model", "calib", "eval", "tokens", "windows", "calib_windows")
ROW_FIELDS = ("tool", "recipe", "method", "bits", "group_size", "sym", "acts", "ppl", "ppl_calib",
              "kl", "top1", "bits_per_weight", "size_mb", "quant_s", "peak_rss_gib", "kv_cache",
              "seqlen")


class ProtocolMismatch(RuntimeError):
    """The file on disk was measured with another protocol (other model, text or window count)."""


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


def complete_row(row: dict) -> dict:
    """Every schema field present (null where it does not apply), schema order first."""
    unknown = set(row) - set(ROW_FIELDS)
    out = {k: row.get(k) for k in ROW_FIELDS}
    out.update({k: row[k] for k in sorted(unknown)})
    return out


def load(path: Path = QUALITY_JSON) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def merge(header: dict, rows: list[dict], path: Path = QUALITY_JSON) -> dict:
    """Merge ``rows`` (and ``header``'s fields) into the file at ``path``; returns the new document.

    Refuses (ProtocolMismatch) when the file holds rows of another protocol: a quick run with fewer
    windows must go to its own file, not silently mix with the full-protocol numbers.
    """
    path = Path(path)
    doc = load(path) or {}
    if doc.get("rows"):
        clash = {k: (doc.get(k), header.get(k)) for k in PROTOCOL_FIELDS
                 if k in header and doc.get(k) is not None and doc.get(k) != header[k]}
        if clash:
            detail = ", ".join(f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in clash.items())
            raise ProtocolMismatch(f"{path}: protocol differs ({detail}); write to another --out")
    versions = {**doc.get("versions", {}), **header.get("versions", {})}
    merged = {**doc, **header, "versions": versions}
    by_key = {row_key(r): r for r in doc.get("rows", [])}
    for r in rows:
        by_key[row_key(r)] = complete_row(r)
    merged["rows"] = sorted(by_key.values(), key=_row_order)
    ordered = {k: merged[k] for k in ("model", "calib", "eval", "tokens", "windows", "machine",
                                      "versions", "date") if k in merged}
    ordered.update({k: v for k, v in merged.items() if k not in ordered and k != "rows"})
    ordered["rows"] = merged["rows"]
    _write_atomic(path, json.dumps(ordered, indent=1) + "\n")
    return ordered


def _row_order(r: dict):
    """FP first, then by bits (high to low), group, symmetry, method, recipe, tool."""
    fp = r.get("method") != "fp"
    bits = -(r.get("bits") or 99)
    return (fp, bits, r.get("group_size") or 0, bool(r.get("sym")), r.get("method") or "",
            r.get("recipe") or "", r.get("tool") or "")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- Markdown

def _fmt(v, digits=2):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "sym" if v else "asym"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _delta(ppl, fp_ppl):
    if ppl is None or not fp_ppl:
        return "—"
    return f"{100 * (ppl / fp_ppl - 1):+.1f}%"


def _fp_row(rows: list[dict], tool: str) -> dict | None:
    """The FP reference: the tool's own FP row, else any FP row (FP is the same model for all)."""
    fps = [r for r in rows if r.get("method") == "fp"]
    return next((r for r in fps if r.get("tool") == tool), fps[0] if fps else None)


def comparable(a: dict, b: dict) -> bool:
    """Same quantization setting (the recipe names of two tools need not agree)."""
    keys = ("method", "bits", "group_size", "sym", "acts", "kv_cache", "seqlen")
    return all(a.get(k) == b.get(k) for k in keys)


def peer_bars(rows: list[dict], ours: str = "lowbit", peer: str = "llmcompressor",
              bar: float = 1.02) -> list[dict]:
    """Each of our rows beside the peer row with the same setting: ratio of PPLs and pass/fail."""
    out = []
    for r in rows:
        if r.get("tool") != ours or r.get("method") == "fp" or r.get("ppl") is None:
            continue
        for p in rows:
            if p.get("tool") == peer and comparable(r, p) and p.get("ppl"):
                ratio = r["ppl"] / p["ppl"]
                out.append({"ours": r["recipe"], "peer": p["recipe"], "ppl": r["ppl"],
                            "peer_ppl": p["ppl"], "ratio": ratio, "passes": ratio <= bar})
    return out


def render(doc: dict, bar: float = 1.02) -> str:
    rows = doc.get("rows", [])
    v = doc.get("versions", {})
    tokens = doc.get("tokens")
    tokens = f"{tokens:,}" if isinstance(tokens, int) else str(tokens)
    lines = [
        f"# Quality: `{doc.get('model')}`, evaluation `{doc.get('eval')}`",
        "",
        f"- calibration text: `{doc.get('calib')}`",
        f"- evaluation: `{doc.get('eval')}`, {doc.get('windows')} windows, {tokens} predicted "
        f"tokens; `ppl_calib` on `pydoc-last24` ({doc.get('calib_windows', 24)} windows of 512)",
        f"- machine: {doc.get('machine')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())),
        f"- date: {doc.get('date')}",
        "",
        "ΔPPL is against the FP row; KL (nats/token) and top-1 agreement are against the FP model on "
        "the same windows. `-clip` / `-noclip` rows switch the preset's weight-MSE clipping search on / off. "
        "quant s and peak RSS are for the process that loads the model, quantizes it and saves it.",
        "",
        "| tool | recipe | method | bits | group | sym | acts | PPL lee-512 | ΔPPL vs FP "
        "| PPL pydoc-last24 | KL | top-1 | bits/weight | size MB | quant s | peak RSS GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- |",
    ]
    for r in rows:
        fp = _fp_row(rows, r.get("tool"))
        delta = "—" if r.get("method") == "fp" else _delta(r.get("ppl"), fp and fp.get("ppl"))
        lines.append("| " + " | ".join([
            r.get("tool") or "—", f"`{r.get('recipe')}`", r.get("method") or "—",
            _fmt(r.get("bits")), _fmt(r.get("group_size")),
            "—" if r.get("sym") is None else _fmt(r.get("sym")), r.get("acts") or "—",
            _fmt(r.get("ppl")), delta, _fmt(r.get("ppl_calib")), _fmt(r.get("kl"), 4),
            _fmt(None if r.get("top1") is None else 100 * r["top1"], 1) +
            ("%" if r.get("top1") is not None else ""),
            _fmt(r.get("bits_per_weight"), 3), _fmt(r.get("size_mb"), 1), _fmt(r.get("quant_s"), 1),
            _fmt(r.get("peak_rss_gib")),
        ]) + " |")
    bars = peer_bars(rows, bar=bar)
    if bars:
        lines += ["", f"## lowbit beside llm-compressor (bar: lowbit PPL ≤ {bar:g} × peer PPL, same setting)",
                  "", "| lowbit recipe | llm-compressor recipe | lowbit PPL | peer PPL | ratio | bar |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for b in bars:
            lines.append(f"| `{b['ours']}` | `{b['peer']}` | {b['ppl']:.2f} | {b['peer_ppl']:.2f} "
                         f"| {b['ratio']:.3f} | {'pass' if b['passes'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


def write_markdown(doc: dict, json_path: Path = QUALITY_JSON) -> Path:
    """Render ``doc`` beside its JSON file (``quality.json`` -> ``quality.md``)."""
    path = Path(json_path).with_suffix(".md")
    _write_atomic(path, render(doc))
    return path


def machine() -> str:
    """The machine line of a results file: CPU model, cores, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (shared), {platform.system()} {platform.release()}"
