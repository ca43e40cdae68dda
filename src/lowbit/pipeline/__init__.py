"""Block-by-block calibration: capture block inputs, round each block, feed the next one."""
from .capture import BlockInputs, calibration_batches, capture_block_inputs, run_block
from .hessians import collect_hessians
from .rounding import round_group
from .sequential import quantize_with_calibration

__all__ = ["BlockInputs", "calibration_batches", "capture_block_inputs", "collect_hessians",
           "quantize_with_calibration", "round_group", "run_block"]
