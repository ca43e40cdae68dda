from .spec import FormatError, FormatSpec, PER_CHANNEL, PER_TENSOR, SUPPORTED_INT_BITS
from .integer import qparams_from_range, to_blocks
from .codecs import dequantize, quantize
from . import fp4, nf  # noqa: F401  (register the lookup tables of kinds "fp" and "nf")
from . import fp8  # noqa: F401  (registers the table of kind "fp8", E4M3)
from .packing import pack, packed_width, unpack

__all__ = [
    "FormatError", "FormatSpec", "PER_CHANNEL", "PER_TENSOR", "SUPPORTED_INT_BITS",
    "dequantize", "quantize", "qparams_from_range", "to_blocks", "pack", "packed_width", "unpack",
]
