from .quant_linear import QuantLinear
from .act_linear import ActQuantLinear
from .w8a8_linear import W8A8Linear
from .llm_int8_linear import LLMInt8Linear
from .fp8_linear import FP8Linear
from .kv_cache import KVCacheSpec, KVMemory, QuantizedKVCache, kv_memory, kv_spec

__all__ = ["ActQuantLinear", "FP8Linear", "LLMInt8Linear", "QuantLinear", "W8A8Linear",
           "KVCacheSpec", "KVMemory", "QuantizedKVCache", "kv_memory", "kv_spec"]
