from .spec import FormatError, FormatSpec, PER_CHANNEL, PER_TENSOR, SUPPORTED_INT_BITS
from .integer import dequantize, quantize, qparams_from_range, to_blocks
from .packing import pack, packed_width, unpack

__all__ = [
    "FormatError", "FormatSpec", "PER_CHANNEL", "PER_TENSOR", "SUPPORTED_INT_BITS",
    "dequantize", "quantize", "qparams_from_range", "to_blocks", "pack", "packed_width", "unpack",
]
