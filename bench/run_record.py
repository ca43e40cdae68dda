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
