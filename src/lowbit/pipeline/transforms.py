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


def register_block_transform(config_type: type):
    def wrap(fn: BlockTransform) -> BlockTransform:
        BLOCK_TRANSFORMS[config_type] = fn
        return fn
    return wrap


def block_transform_for(step) -> BlockTransform:
    _load_builtin()
    if type(step) not in BLOCK_TRANSFORMS:
        raise ValueError(f"no block-level handler for transform step {type(step).__name__}")
    return BLOCK_TRANSFORMS[type(step)]


# Whole-model transforms (rotation): ``fn(step, model) -> rows``, run once before any block step.
ModelTransform = Callable[[object, nn.Module], list]
MODEL_TRANSFORMS: dict[type, ModelTransform] = {}


def register_model_transform(config_type: type):
    def wrap(fn: ModelTransform) -> ModelTransform:
        MODEL_TRANSFORMS[config_type] = fn
        return fn
    return wrap


def model_transform_for(step) -> ModelTransform:
    _load_builtin()
    if type(step) not in MODEL_TRANSFORMS:
        raise ValueError(f"no model-level handler for transform step {type(step).__name__}")
    return MODEL_TRANSFORMS[type(step)]


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
