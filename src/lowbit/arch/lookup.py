"""Find a model's ArchMap, and resolve its paths to modules."""
from __future__ import annotations

import warnings

from torch import nn

from ..errors import InputError

from .archmap import ArchMap, LinearGroup
from .tables import ARCH_TABLE

_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "transformer.layers",
                "gpt_neox.layers", "model.language_model.layers")


class UnsupportedModelError(InputError):
    pass


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    m = root
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, leaf, new)


def _fallback(model: nn.Module, model_type: str) -> ArchMap:
    for path in _BLOCK_PATHS:
        blocks = get_module(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            linears = tuple(n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear))
            if not linears:
                break
            warnings.warn(
                f"architecture {model_type!r} has no lowbit table: quantizing every nn.Linear "
                f"inside {path} ({len(linears)} per block); transforms that need the feeding "
                f"ops (AWQ, SmoothQuant) are not available for it", stacklevel=3)
            return ArchMap(name=f"fallback:{model_type}", model_types=(model_type,), blocks=path,
                           embeddings=(), final_norm="", head="lm_head",
                           groups=tuple(LinearGroup("", (n,), "none") for n in linears),
                           fallback=True)
    raise UnsupportedModelError(
        f"architecture {model_type!r} is not supported: no lowbit table and no decoder blocks "
        f"with nn.Linear layers found at {', '.join(_BLOCK_PATHS)}")


def arch_for(model: nn.Module) -> ArchMap:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    if model_type in ARCH_TABLE:
        return ARCH_TABLE[model_type]
    return _fallback(model, model_type)


def blocks_of(model: nn.Module, arch: ArchMap) -> nn.ModuleList:
    blocks = get_module(model, arch.blocks)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(f"{arch.name}: no decoder blocks at {arch.blocks!r}")
    return blocks
