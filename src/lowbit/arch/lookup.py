"""Find a model's ArchMap, and resolve its paths to modules."""
from __future__ import annotations

import warnings

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import InputError

from .archmap import ArchMap, LinearGroup
from .tables import ARCH_TABLE, ARCH_VARIANTS

# Where decoder blocks live in the transformers families we know of, tried in order for
# architectures without a table; the last ones are base models without a head (AutoModel).
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "transformer.layers",
                "gpt_neox.layers", "model.language_model.layers", "transformer.blocks",
                "layers", "decoder.layers", "h")


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


def _has_blocks(model: nn.Module, path: str) -> bool:
    blocks = get_module(model, path)
    return isinstance(blocks, nn.ModuleList) and len(blocks) > 0


def _block_linears(block: nn.Module) -> tuple[tuple[str, ...], bool]:
    """Paths of the block's nn.Linear layers, or, where it has none, of its Conv1D layers."""
    linears = tuple(n for n, m in block.named_modules() if isinstance(m, nn.Linear))
    if linears:
        return linears, False
    return tuple(n for n, m in block.named_modules() if isinstance(m, Conv1D)), True


def _fallback(model: nn.Module, model_type: str, why: str = "has no lowbit table") -> ArchMap:
    for path in _BLOCK_PATHS:
        if not _has_blocks(model, path):
            continue
        linears, conv1d = _block_linears(get_module(model, path)[0])
        if not linears:
            break
        kind = "Conv1D" if conv1d else "nn.Linear"
        warnings.warn(
            f"architecture {model_type!r} {why}: quantizing every {kind} "
            f"inside {path} ({len(linears)} per block); transforms that need the feeding "
            f"ops (AWQ, SmoothQuant) are not available for it", stacklevel=3)
        return ArchMap(name=f"fallback:{model_type}", model_types=(model_type,), blocks=path,
                       embeddings=(), final_norm="", head="lm_head",
                       groups=tuple(LinearGroup("", (n,), "none") for n in linears),
                       conv1d=conv1d, fallback=True)
    raise UnsupportedModelError(
        f"architecture {model_type!r} is not supported: no lowbit table and no decoder blocks "
        f"with linear layers found at {', '.join(_BLOCK_PATHS)}")


def arch_for(model: nn.Module) -> ArchMap:
    """The table row for the model's type (a matching variant first); else the fallback."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    candidates = [m for m in ARCH_VARIANTS.get(model_type, ()) if m.matches(config)]
    if model_type in ARCH_TABLE:
        candidates.append(ARCH_TABLE[model_type])
    for arch in candidates:
        if _has_blocks(model, arch.blocks):
            return arch
    if candidates:
        # A known model type whose modules sit elsewhere (a wrapper we have no row for).
        return _fallback(model, model_type, f"({type(model).__name__}) has no decoder blocks at "
                                            f"{candidates[-1].blocks!r}, where its table expects them")
    return _fallback(model, model_type)


def blocks_of(model: nn.Module, arch: ArchMap) -> nn.ModuleList:
    blocks = get_module(model, arch.blocks)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(f"{arch.name}: no decoder blocks at {arch.blocks!r}")
    return blocks
