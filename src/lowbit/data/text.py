"""Text sources: built-in corpora, local files and Hugging Face datasets, each returned as one string.

``builtin:pydoc``   the calibration text of BENCHMARK.md (stdlib ``pydoc_data.topics``)
``builtin:lee``     the evaluation text of BENCHMARK.md (gensim's ``lee_background.cor``)
``PATH.txt``        a UTF-8 file, used as is
``PATH.jsonl``      one JSON object per line; the ``"text"`` fields joined with blank lines
``hf:NAME[:SPLIT]`` wikitext2, c4 or pileval through ``datasets`` (online only)
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .online import hub_reachable, offline_by_env

DOC_SEPARATOR = "\n\n"
LEE_FILE = "test/test_data/lee_background.cor"


def pydoc_text() -> str:
    """``pydoc_data.topics`` joined in sorted-key order (the ``pydoc-128x512`` protocol)."""
    from pydoc_data.topics import topics

    return DOC_SEPARATOR.join(topics[k] for k in sorted(topics))


def lee_text() -> str:
    """gensim's Lee corpus as ``lee-512`` prepares it: lines stripped, empty ones dropped, blank-line joined."""
    # find_spec locates the data file without importing gensim (slow, and pulls scipy).
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("builtin:lee needs gensim: pip install gensim (or pip install lowbit[bench])")
    path = Path(spec.submodule_search_locations[0]) / LEE_FILE
    if not path.is_file():
        raise InputError(f"builtin:lee: {path} is missing from the installed gensim; reinstall it "
                         "with pip install --force-reinstall gensim")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return DOC_SEPARATOR.join(line for line in lines if line)


BUILTIN_TEXTS = {"pydoc": pydoc_text, "lee": lee_text}


@dataclass(frozen=True)
class HFText:
    """Where a named Hugging Face text lives, per split, and how much of it to keep."""

    path: str
    name: str | None
    splits: dict  # split -> data_files (None: the dataset's own split)
    default_split: str
    field: str = "text"
    # c4 and the Pile shards hold tens of millions of characters; a few million is plenty for
    # calibration or perplexity and keeps tokenization to seconds.
    max_chars: int | None = None


HF_TEXTS = {
    # GPTQ's conventions: wikitext-2 raw test split for perplexity, c4's first shard per split.
    "wikitext2": HFText("wikitext", "wikitext-2-raw-v1", {"train": None, "validation": None,
                                                          "test": None}, "test"),
    "c4": HFText("allenai/c4", None, {
        "train": {"train": "en/c4-train.00000-of-01024.json.gz"},
        "validation": {"validation": "en/c4-validation.00000-of-00008.json.gz"}},
        "validation", max_chars=4_000_000),
    # AWQ's calibration set.
    "pileval": HFText("mit-han-lab/pile-val-backup", None, {"validation": None}, "validation",
                      max_chars=4_000_000),
}


def hf_text(name: str, split: str | None = None) -> str:
    if name not in HF_TEXTS:
        raise InputError(f"unknown text source hf:{name} (known: {', '.join('hf:' + k for k in HF_TEXTS)})")
    entry = HF_TEXTS[name]
    split = split or entry.default_split
    if split not in entry.splits:
        raise InputError(f"hf:{name} has no split {split!r} (known: {', '.join(entry.splits)})")
    if importlib.util.find_spec("datasets") is None:
        raise InputError(f"hf:{name} needs the datasets package: pip install datasets (or pip install lowbit[hf])")
    if offline_by_env() or not hub_reachable():
        raise InputError(f"hf:{name} needs the Hugging Face hub, which is unreachable (offline); "
                         "use builtin:pydoc, builtin:lee or a local .txt/.jsonl file")
    import datasets

    files = entry.splits[split]
    try:
        if files is None:
            ds = datasets.load_dataset(entry.path, entry.name, split=split)
        else:
            ds = datasets.load_dataset(entry.path, entry.name, data_files=files, split=split)
    except Exception as e:  # datasets raises many unrelated types for one cause: no data
        raise InputError(f"hf:{name}: could not load {entry.path} ({split}): {_first_line(e)}") from e
    return _join_limited((row[entry.field] for row in ds), entry.max_chars)


def _join_limited(docs, max_chars: int | None) -> str:
    kept, total = [], 0
    for doc in docs:
        kept.append(doc)
        total += len(doc) + len(DOC_SEPARATOR)
        if max_chars is not None and total >= max_chars:
            break
    return DOC_SEPARATOR.join(kept)


def jsonl_text(path: Path) -> str:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InputError(f"{path}:{lineno}: expected an object with a string field \"text\"")
            docs.append(row["text"])
    return DOC_SEPARATOR.join(docs)


def file_text(path: Path) -> str:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            return jsonl_text(path)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from e
    raise InputError(f"{path}: unsupported text file type {suffix or '(none)'!r}; use .txt or .jsonl")


def load_text(source: str) -> str:
    """The text named by ``source`` (see the module docstring); raises InputError if it is empty."""
    source = str(source)
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN_TEXTS:
            raise InputError(f"unknown text source {source} (known: "
                             f"{', '.join('builtin:' + k for k in BUILTIN_TEXTS)})")
        text = BUILTIN_TEXTS[name]()
    elif source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        text = hf_text(name, split or None)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"text source not found: {source} (expected builtin:pydoc, builtin:lee, "
                             f"hf:wikitext2|c4|pileval, or a .txt/.jsonl file)")
        text = file_text(path)
    if not text.strip():
        raise InputError(f"text source {source} is empty")
    return text


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
