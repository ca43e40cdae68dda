"""Checkpoints of the block-by-block walk, so that a killed run restarts from its last finished block.

A resume directory holds:

- ``state.json``: the run's fingerprint, how many blocks are finished, the finished layers'
  report rows and what each quantized linear is (path, shape, format, bias, scale dtype);
- ``block-0003.safetensors``: the state dict of finished block 3 (QuantLinear buffers included);
- ``hidden-0004.safetensors``: the calibration hidden states that enter block 4.

Every file is written under a temporary name, flushed and renamed into place, and ``state.json``
is replaced last: it only ever names files that are complete, so a kill (even ``kill -9``) at any
instant leaves the previous consistent state or the next one. The fingerprint hashes the model's
weights, the recipe, the calibration token ids and every option that changes the result, so a
directory left by a different command is never resumed from (it is cleared instead).

Resuming reproduces an uninterrupted run bit for bit: saved tensors are the exact bytes, and the
next block sees exactly the hidden states it would have seen.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..arch import get_module, set_module
from ..errors import InputError
from ..formats import FormatSpec
from ..formats.activations import ActivationSpec
from ..modules import QuantLinear
from ..modules.act_linear import ActQuantLinear
from ..modules.factory import ACT_MODULES
from ..modules.input_hadamard import empty_input_hadamard, has_input_hadamard

STATE = "state.json"
FORMAT_VERSION = 2  # 2: W8A8 layers record their activation spec


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else memoryview(b"")


def fingerprint(model: nn.Module, recipe_dict: dict, batches: list[torch.Tensor], options: dict,
                source: str | None = None) -> str:
    """A hash of everything the quantized result depends on: model weights (names, dtypes,
    shapes, bytes), recipe, calibration ids as batched, options, and the library versions."""
    from .. import __version__
    h = hashlib.blake2b(digest_size=20)
    header = {"format": FORMAT_VERSION, "lowbit": __version__, "torch": torch.__version__,
              "source": source, "recipe": recipe_dict, "options": options}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    for b in batches:
        h.update(f"batch|{tuple(b.shape)}".encode())
        h.update(_tensor_bytes(b.long()))
    return h.hexdigest()


@dataclass
class ResumeState:
    """What a resume directory says is done: ``finished`` blocks and their report ``rows``."""
    finished: int = 0
    rows: list[dict] = field(default_factory=list)
    layers: dict[str, list[dict]] = field(default_factory=dict)  # block index (str) -> linears


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class ResumeDir:
    """One run's resume directory, bound to that run's ``fingerprint``."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.state = ResumeState()

    # -- reading -----------------------------------------------------------------------------
    def load(self) -> ResumeState:
        """The finished state left by the same run, or an empty state (the directory is then
        cleared of any other run's files)."""
        state_file = self.path / STATE
        if state_file.is_file():
            try:
                data = json.loads(state_file.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("fingerprint") == self.fingerprint and data.get("version") == FORMAT_VERSION:
                self.state = ResumeState(data["finished"], data["rows"], data["layers"])
                return self.state
        self.clear()
        return self.state

    def restore_block(self, index: int, block: nn.Module) -> None:
        """Put finished block ``index`` back: its quantized linears and its saved state dict."""
        for meta in self.state.layers.get(str(index), []):
            old = get_module(block, meta["path"])
            bias = getattr(old, "bias", None) is not None
            dtype, device = getattr(torch, meta["dtype"]), meta_device(old)
            if "activations" in meta:  # W8A8 / FP8 / LLM.int8 (the weight format is the kind's)
                acts = ActivationSpec.from_dict(meta["activations"])
                q = ACT_MODULES[acts.kind].empty(meta["in"], meta["out"], acts, bias, dtype=dtype, device=device)
            else:
                q = QuantLinear(meta["in"], meta["out"], FormatSpec.from_dict(meta["spec"]), bias,
                                dtype=dtype, device=device)
            if "input_hadamard" in meta:  # the signs come with the block's state dict
                empty_input_hadamard(q, meta["input_hadamard"])
            set_module(block, meta["path"], q)
        saved = load_file(self.path / _block_file(index))
        missing, unexpected = block.load_state_dict(saved, strict=False)
        if missing or unexpected:
            raise InputError(f"resume directory {self.path}: block {index} does not match the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

    def load_hidden(self, index: int, device) -> list[torch.Tensor]:
        saved = load_file(self.path / _hidden_file(index))
        return [saved[f"hidden.{b}"].to(device) for b in range(len(saved))]

    # -- writing -----------------------------------------------------------------------------
    def save_block(self, index: int, block: nn.Module, quantized: dict[str, nn.Module],
                   rows: list[dict], next_hidden: list[torch.Tensor] | None) -> None:
        """Record block ``index`` as finished, with the inputs of block ``index + 1``."""
        self.path.mkdir(parents=True, exist_ok=True)
        if next_hidden is not None:
            tensors = {f"hidden.{b}": h.detach().to("cpu").contiguous() for b, h in enumerate(next_hidden)}
            _write_atomic(self.path / _hidden_file(index + 1), lambda p: save_file(tensors, p))
        state = {k: v.detach().to("cpu").contiguous() for k, v in block.state_dict().items()}
        _write_atomic(self.path / _block_file(index), lambda p: save_file(state, p))
        self.state.finished = index + 1
        self.state.rows = self.state.rows + list(rows)
        self.state.layers[str(index)] = [_layer_meta(path, q) for path, q in quantized.items()]
        data = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "finished": self.state.finished, "rows": self.state.rows, "layers": self.state.layers}
        _write_atomic(self.path / STATE, lambda p: p.write_text(json.dumps(data)))
        _fsync_dir(self.path)
        # Only the newest hidden states are ever needed; older ones go once state.json is past them.
        (self.path / _hidden_file(index)).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove this directory's resume files (and the directory itself if it is then empty)."""
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if p.name == STATE or p.name.startswith((".state.json", "block-", "hidden-", ".block-", ".hidden-")):
                p.unlink(missing_ok=True)
        remove_if_empty(self.path)


def _layer_meta(path: str, q: nn.Module) -> dict:
    """What ``restore_block`` needs to rebuild a finished layer before loading its state."""
    meta = {"path": path, "in": q.in_features, "out": q.out_features, "spec": q.spec.to_dict()}
    if isinstance(q, ActQuantLinear):
        # The module's dtype is its bias's; its weight scales keep their kind's own dtype.
        meta["activations"] = q.activation_spec().to_dict()
        dtype = q.bias.dtype if q.bias is not None else q.weight_scale.dtype
    else:
        dtype = q.weight_scale.dtype
    meta["dtype"] = str(dtype).removeprefix("torch.")
    if has_input_hadamard(q):
        meta["input_hadamard"] = q.in_features
    return meta


def remove_resume_dir(path: str | os.PathLike) -> None:
    """Delete a resume directory after its result is safely saved."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)


def remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def meta_device(module: nn.Module) -> torch.device:
    t = next(iter(module.parameters()), None)
    return t.device if t is not None else torch.device("cpu")


def _block_file(index: int) -> str:
    return f"block-{index:04d}.safetensors"


def _hidden_file(index: int) -> str:
    return f"hidden-{index:04d}.safetensors"
