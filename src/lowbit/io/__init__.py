"""Checkpoint input/output: compressed-tensors pack-quantized and lowbit's native layout."""
from .checkpoint import choose_format, detect_format, inspect, load, save
from .files import CheckpointError

inspect_checkpoint = inspect

__all__ = ["CheckpointError", "choose_format", "detect_format", "inspect", "inspect_checkpoint",
           "load", "save"]
