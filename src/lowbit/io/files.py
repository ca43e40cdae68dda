"""Reading a checkpoint directory's files with one-line errors for every way they can be bad.

safetensors files are checked without reading their data: the 8-byte header length, the JSON
header, and that the file is long enough for every tensor's byte range (a truncated copy is the
most common corruption, and transformers would otherwise fail deep inside a memory map).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import InputError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
RECIPE_NAME = "recipe.yaml"


class CheckpointError(InputError):
    """A checkpoint directory that is missing, incomplete or corrupt."""


def checkpoint_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a directory")
    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"checkpoint {p} has no {CONFIG_NAME} (not a saved model directory)")
    return p


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_config(path: str | Path) -> dict:
    return read_json(checkpoint_dir(path) / CONFIG_NAME)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint (single file or sharded with an index)."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {path} is missing weight shard {missing[0]}")
        return [path / s for s in shards]
    raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file holds all its data."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{file}: truncated or corrupt safetensors header "
                                      f"(claims {n} bytes, file has {size})")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{file}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, needs {8 + n + end})")
    return header


def tensor_table(path: Path) -> dict[str, dict]:
    """``name -> {"dtype", "shape"}`` over every weight file, each file checked for truncation."""
    table: dict[str, dict] = {}
    for f in weight_files(path):
        for name, info in safetensors_header(f).items():
            if name != "__metadata__":
                table[name] = {"dtype": info["dtype"], "shape": list(info["shape"])}
    return table
