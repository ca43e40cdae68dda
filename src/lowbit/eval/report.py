"""The before/after report: ``report.json`` (everything) and ``report.md`` (tables for people).

A report is a plain dict. Keys the Markdown renders, all optional but ``rows``:
``model``, ``recipe`` (dict or name), ``text``, ``seqlen``, ``windows``, ``tokens``,
``rows`` (one dict per model: ``name``, ``ppl``, ``kl``, ``top1``, ``size_mb``, ``bits_per_weight``,
``kv_cache`` (None, ``"int8"``, ``"int4"``) and ``seqlen``; rows of a KV-cache evaluation
(``eval.kv_eval.kv_row``) add ``kv_bytes_per_token`` and the other ``kv_*`` fields, and the
table gains their columns; the first row is the baseline of ΔPPL), and ``layers`` (QuantizationReport.layers) or
``quantization`` (QuantizationReport.to_dict()). Every key goes to the JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .evaluate import EvalResult

TABLE_COLUMNS = ("model", "PPL", "ΔPPL", "KL", "top-1", "size MB", "bits/weight")
KV_COLUMNS = ("KV cache", "KV B/token", "KV saving", "B/quantized token", "vs float16", "keys read quantized")


def before_after_rows(result: EvalResult, name: str, *, fp_size_mb: float | None = None,
                      quant_size_mb: float | None = None, fp_bits: float | None = None,
                      quant_bits: float | None = None) -> list[dict]:
    """The FP and quantized rows from one lockstep evaluation (``evaluate(q, w, reference=fp)``)."""
    fp = {"name": "FP", "ppl": result.ref_ppl, "kl": None, "top1": None,
          "size_mb": fp_size_mb, "bits_per_weight": fp_bits, "kv_cache": None, "seqlen": result.seqlen}
    quant = {"name": name, "ppl": result.ppl, "kl": result.kl, "top1": result.top1,
             "size_mb": quant_size_mb, "bits_per_weight": quant_bits, "kv_cache": None,
             "seqlen": result.seqlen}
    return [fp, quant]


def _fmt(value, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _times(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _pct(fraction) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f}%"


def _delta_pct(ppl, base, digits: int = 1) -> str:
    if ppl is None or base is None or not base or not math.isfinite(base):
        return "—"
    return f"{(ppl / base - 1) * 100:+.{digits}f}%"


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows; ΔPPL is relative to the first row (the baseline)."""
    base = rows[0].get("ppl") if rows else None
    # KV-cache rows differ from the float cache by tenths of a percent: show hundredths.
    kv = any("kv_bytes_per_token" in r for r in rows)
    columns = TABLE_COLUMNS + (KV_COLUMNS if kv else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for i, r in enumerate(rows):
        cells = [str(r.get("name", f"row {i}")), _fmt(r.get("ppl"), ".2f"),
                 "—" if i == 0 else _delta_pct(r.get("ppl"), base, 2 if kv else 1), _fmt(r.get("kl"), ".4f"),
                 _pct(r.get("top1")),
                 _fmt(r.get("size_mb"), ".1f"), _fmt(r.get("bits_per_weight"), ".3f")]
        if kv:
            cells += [r.get("kv_cache") or "float", _fmt(r.get("kv_bytes_per_token"), ",.0f"),
                      _times(r.get("kv_saving")), _fmt(r.get("kv_quantized_bytes_per_token"), ",.0f"),
                      _times(r.get("kv_quantized_saving")), _pct(r.get("kv_quantized_key_share"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_layers(layers: list[dict]) -> str:
    """A Markdown table of per-layer stats; columns are the union of the rows' keys."""
    columns: list[str] = []
    for row in layers:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in layers:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".4g")
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return str(value)


def _layers_of(report: dict) -> list[dict]:
    if report.get("layers"):
        return report["layers"]
    quant = report.get("quantization") or {}
    return quant.get("layers") or []


def render_markdown(report: dict) -> str:
    recipe = report.get("recipe")
    recipe_name = recipe.get("name") if isinstance(recipe, dict) else recipe
    out = ["# lowbit report", ""]
    facts = [("model", report.get("model")), ("recipe", recipe_name), ("evaluation text", report.get("text")),
             ("windows", report.get("windows")), ("seqlen", report.get("seqlen")),
             ("predicted tokens", report.get("tokens"))]
    out += [f"- {k}: `{v}`" for k, v in facts if v is not None]
    out += ["", "## Quality and size", "", format_table(report.get("rows", [])), ""]
    out += ["KL is KL(P_FP ‖ P_quantized) per predicted token (nats); top-1 is the share of "
            "positions where both models' most likely next token agree.", ""]
    layers = _layers_of(report)
    if layers:
        out += ["## Layers", "", format_layers(layers), ""]
    return "\n".join(out)


def _jsonable(value):
    """Dataclasses, objects with ``to_dict``, paths and non-finite floats made JSON-safe."""
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no inf/nan
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_report(out_dir, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _jsonable(report)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(data), encoding="utf-8")
    return json_path, md_path
