"""What a device benchmark records about its run, and how it writes JSON beside a Markdown table.

``command_line`` quotes the invocation as the results should show it: the device machine's output
folder (``$OUT`` there) written as ``$OUT``. ``write_json_and_table`` writes ``<stem>.json`` (the raw
document) and ``<stem>.md`` (a title, one line of provenance, the table) into a folder.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path


def command_line(prefix: str, argv: list[str]) -> str:
    """``prefix`` (e.g. ``PYTHONPATH=src python3 bench/x.py``) and ``argv``, the value of ``$OUT``
    written as ``$OUT``."""
    out = os.environ.get("OUT")
    return " ".join([prefix, *("$OUT" if out and a == out else a for a in argv)])


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_json_and_table(out: Path, stem: str, doc: dict, title: str, provenance: str, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"{stem}.md").write_text(f"# {title}\n\n{provenance}\n\n{table}\n")


def device_doc(prefix: str, argv: list[str], device: str = "cuda", **fields) -> dict:
    """The header every device benchmark's JSON starts with: the device, torch and Triton
    versions, the date, the command (``command_line``) and how it was timed, then ``fields``."""
    import platform

    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    on_gpu = device == "cuda"
    return {"device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton_version, "date": utc_now(),
            "command": command_line(prefix, argv), "timing": "graph" if on_gpu else "eager-cpu", **fields}


def provenance(doc: dict) -> str:
    """One line for the Markdown: date · device · versions · command · timing."""
    parts = [doc["date"], doc["device"], f"torch {doc['torch']}"]
    if doc.get("triton"):
        parts.append(f"triton {doc['triton']}")
    parts += [f"`{doc['command']}`", f"timing: {doc['timing']}"]
    return " · ".join(parts)


def record(out: Path, stem: str, title: str, script: str, argv: list[str], table: str,
           device: str = "cuda", **fields) -> dict:
    """A device benchmark's ending: its document (``device_doc`` for ``bench/<script>`` run with
    ``argv``, then ``fields``) written beside its table, the table printed; returns the document."""
    doc = device_doc(f"PYTHONPATH=src python3 bench/{script}", argv, device, **fields)
    write_json_and_table(out, stem, doc, title, provenance(doc), table)
    print(table, flush=True)
    return doc
