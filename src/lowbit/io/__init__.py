"""Checkpoint input/output: compressed-tensors pack-quantized and lowbit's native layout."""
from .atomic import check_writable_target as check_output_dir
from .checkpoint import choose_format, detect_format, inspect, is_quantized_checkpoint, load, save
from .files import CheckpointError
from . import ct_activation_schemes  # noqa: F401  (registers the W8A8 / FP8 compressed-tensors rows)
from . import ct_fp4  # noqa: F401  (registers the MXFP4 / NVFP4 compressed-tensors rows)

inspect_checkpoint = inspect

__all__ = ["CheckpointError", "check_output_dir", "choose_format", "detect_format", "inspect",
           "inspect_checkpoint", "is_quantized_checkpoint", "load", "save"]
