"""The block-level work of recipe transforms, dispatched on the step's config type.

A transform step (AWQ) changes one decoder block's float weights before the recipe's rounder
rounds them. The walk (``sequential.py``) calls the handler registered for the step's config
type with a :class:`BlockContext`; it never looks at method names. Whole-model transforms
(rotation) have a model-level handler instead, run once by ``quantize_model`` before the walk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..arch import ArchMap
from ..recipes import Recipe
from .capture import BlockInputs


@dataclass
class BlockContext:
    """What a transform sees of one block: the block (on ``device``), its index, the model's
    table row, the calibration inputs of this block, the recipe, and the block-relative paths
    of the linears this run quantizes there (``wanted``)."""

    block: nn.Module
    index: int
    arch: ArchMap
    inputs: BlockInputs
    device: torch.device
    recipe: Recipe
    wanted: tuple[str, ...]
    hidden_device: torch.device | None = None

    @property
    def prefix(self) -> str:
        return f"{self.arch.blocks}.{self.index}."


@dataclass
class TransformResult:
    """``rows``: statistics for the report (one dict per input group); ``outputs``: the float
    block's outputs per calibration batch when the handler was asked to keep them (else None)."""

    rows: list[dict] = field(default_factory=list)
    outputs: list[torch.Tensor] | None = None


BlockTransform = Callable[[object, BlockContext, bool], TransformResult]
BLOCK_TRANSFORMS: dict[type, BlockTransform] = {}
# Whole-model transforms (rotation): ``fn(step, model) -> rows``, run once before any block step.
ModelTransform = Callable[[object, nn.Module], list]
MODEL_TRANSFORMS: dict[type, ModelTransform] = {}


def _registrar(table: dict):
    """A decorator factory: ``@register(ConfigType)`` files the function under its config type."""
    def register(config_type: type):
        def wrap(fn):
            table[config_type] = fn
            return fn
        return wrap
    return register


def _handler(table: dict, step, level: str):
    _load_builtin()
    if type(step) not in table:
        raise ValueError(f"no {level} handler for transform step {type(step).__name__}")
    return table[type(step)]


register_block_transform = _registrar(BLOCK_TRANSFORMS)
register_model_transform = _registrar(MODEL_TRANSFORMS)


def block_transform_for(step) -> BlockTransform:
    return _handler(BLOCK_TRANSFORMS, step, "block-level")


def model_transform_for(step) -> ModelTransform:
    return _handler(MODEL_TRANSFORMS, step, "model-level")


def apply_model_transforms(model: nn.Module, recipe: Recipe) -> list[dict]:
    """Run the recipe's whole-model transforms on ``model`` in place; their report rows."""
    rows = []
    for step in recipe.model_transforms:
        rows += model_transform_for(step)(step, model)
    return rows


def _load_builtin() -> None:
    from . import awq_block  # noqa: F401  (registers AWQConfig)
    from . import smoothquant_block  # noqa: F401  (registers SmoothQuantConfig)
    from . import rotate  # noqa: F401  (registers RotationConfig, whole-model)
    from . import online_hadamard_block  # noqa: F401  (registers OnlineHadamardConfig)
