"""A key/value cache stored as packed low-bit integers (int8, int4), for transformers models.

Each attention layer keeps ``[quantized tokens][float residual]``: the most recent ``residual``
tokens stay in the model's float dtype (KIVI's full-precision window: recent tokens get the most
attention, and keys quantized per channel need a whole block of tokens first); older tokens move,
once, into packed codes. The tokens of the current forward call are always used in float, as in
any KV cache, and are stored afterwards.

Storage of a quantized run of tokens (``formats.integer`` conventions: ``x ≈ (q - zero) * scale``,
asymmetric, range widened to include 0, scale rounded *up* to float16 before the codes are taken):
codes packed into int32 words along the head dimension (``formats.packing``, int4 = 8 codes per
word), a float16 scale and a uint8 zero per group (3 bytes per group: int8 g64 costs 8.375 bits
per value, int4 g64 4.375). Groups run along the head dimension, one token at a time
(``key_axis="token"``, the default, and always for values), or, for keys with
``key_axis="channel"`` (KIVI), along the token axis: one scale per channel per block of
``group_size`` tokens, since keys carry a few large, consistently signed channels that set the
scale of every per-token group. (On SmolLM2 per-channel keys have a third of the per-token
relative error, yet per-token keys give the lower perplexity: docs/KV-CACHE.md.)

Sliding-window layers (Gemma 2/3, Mistral with ``sliding_window``) keep only the last
``sliding_window - 1`` tokens, as transformers' own sliding layers do; older quantized blocks are
dropped whole. Layer kinds other than full and sliding attention (linear attention) are refused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

try:  # per-layer cache kinds arrived in transformers 5.2x; lowbit itself supports any 5.x
    from transformers.cache_utils import DummyLayer, get_layer_types_and_kwargs
except ImportError:
    DummyLayer = get_layer_types_and_kwargs = None

from ..errors import InputError
from ..formats.integer import dequantize_blocks, qparams_from_range, quantize_blocks
from ..formats.packing import pack, unpack
from ..formats.spec import FormatSpec

KEY_AXES = ("channel", "token")
KV_BITS = (2, 4, 8)
# int8 is accurate enough to quantize every token at once; int4 keeps KIVI's float window.
DEFAULT_RESIDUAL = {8: 0, 4: 128, 2: 128}
SCALE_DTYPE = torch.float16


@dataclass(frozen=True)
class KVCacheSpec:
    """How the cache stores keys and values.

    ``group_size``: values per scale along the head dimension (-1: the whole head); for keys
    quantized per channel, tokens per block. ``residual``: most recent tokens kept in float.
    """

    bits: int = 4
    group_size: int = 64
    residual: int = 128
    key_axis: str = "token"

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in KV_BITS:
            raise InputError(f"KV cache bits must be one of {list(KV_BITS)}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                not (self.group_size > 0 or self.group_size == -1):
            raise InputError(f"KV cache group size must be a positive integer or -1 (whole head), "
                             f"got {self.group_size!r}")
        if isinstance(self.residual, bool) or not isinstance(self.residual, int) or self.residual < 0:
            raise InputError(f"KV cache residual must be an integer >= 0, got {self.residual!r}")
        if self.key_axis not in KEY_AXES:
            raise InputError(f"KV cache key axis must be one of {list(KEY_AXES)}, got {self.key_axis!r}")

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def label(self) -> str:
        g = "whole head" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits} {g} residual {self.residual}, keys per {self.key_axis}"

    def group_for(self, head_dim: int) -> int:
        """The group size for a head of ``head_dim`` (values are grouped along it in every mode)."""
        group = head_dim if self.group_size == -1 else self.group_size
        if head_dim % group:
            raise InputError(f"KV cache group size {group} does not divide the head dimension "
                             f"{head_dim}; choose a divisor of {head_dim} or -1")
        return group

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def kv_spec(name: str, group_size: int | None = None, residual: int | None = None,
            key_axis: str | None = None) -> KVCacheSpec:
    """``"int8"`` / ``"int4"`` (/ ``"int2"``) with its defaults, any of them overridden."""
    bits = {f"int{b}": b for b in KV_BITS}.get(name)
    if bits is None:
        raise InputError(f"unknown KV cache {name!r} (choose {', '.join(f'int{b}' for b in KV_BITS)})")
    return KVCacheSpec(bits=bits, group_size=64 if group_size is None else group_size,
                       residual=DEFAULT_RESIDUAL[bits] if residual is None else residual,
                       key_axis=key_axis or "token")


# ---------------------------------------------------------------- one quantized run of tokens

@dataclass
class QuantizedRun:
    """Tokens of keys or values as packed codes.

    ``codes (B, H, T, ceil(D·bits/32))`` int32; ``scale`` float16 and ``zero`` uint8 of shape
    ``(B, H, T, D/G)`` (``axis="token"``: groups of G along the head dimension) or
    ``(B, H, T/G, D)`` (``axis="channel"``: one per channel per block of G tokens).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group: int
    axis: str
    head_dim: int

    @property
    def length(self) -> int:
        return self.codes.shape[2]

    def append(self, other: "QuantizedRun") -> "QuantizedRun":
        return dataclasses.replace(self, codes=torch.cat([self.codes, other.codes], 2),
                                   scale=torch.cat([self.scale, other.scale], 2),
                                   zero=torch.cat([self.zero, other.zero], 2))

    def drop_first(self, n: int) -> "QuantizedRun":
        """Without the oldest ``n`` tokens (a multiple of the block for ``axis="channel"``)."""
        blocks = n // self.group if self.axis == "channel" else n
        # Copies, so that the dropped tokens' storage is freed now.
        return dataclasses.replace(self, codes=self.codes[:, :, n:].clone(),
                                   scale=self.scale[:, :, blocks:].clone(), zero=self.zero[:, :, blocks:].clone())

    def map_batch(self, fn) -> "QuantizedRun":
        return dataclasses.replace(self, codes=fn(self.codes), scale=fn(self.scale), zero=fn(self.zero))


def _format(bits: int) -> FormatSpec:
    return FormatSpec(bits=bits, sym=False, group_size=-1, scale_dtype="float16")


def _to_blocks(x: torch.Tensor, group: int, axis: str) -> torch.Tensor:
    """``(B, H, T, D)`` → ``(B, H, n, group_members)``-shaped blocks, the shared-scale axis last."""
    b, h, t, d = x.shape
    if axis == "token":
        return x.reshape(b, h, t, d // group, group)
    return x.reshape(b, h, t // group, group, d).transpose(-1, -2)


def _from_blocks(blocks: torch.Tensor, axis: str) -> torch.Tensor:
    b, h = blocks.shape[:2]
    if axis == "token":
        return blocks.reshape(b, h, blocks.shape[2], -1)
    return blocks.transpose(-1, -2).reshape(b, h, -1, blocks.shape[-2])


def quantize_run(x: torch.Tensor, bits: int, group: int, axis: str) -> QuantizedRun:
    """Quantize ``x (B, H, T, D)``; for ``axis="channel"`` T must be a multiple of ``group``."""
    fmt = _format(bits)
    blocks = _to_blocks(x, group, axis)
    scale, zero = qparams_from_range(blocks.amin(-1), blocks.amax(-1), fmt, SCALE_DTYPE)
    codes = _from_blocks(quantize_blocks(blocks, scale, zero, fmt), axis)
    return QuantizedRun(pack(codes, bits), scale, zero.to(torch.uint8), bits, group, axis, x.shape[-1])


def dequantize_run(run: QuantizedRun, dtype: torch.dtype) -> torch.Tensor:
    """``(B, H, T, D)`` in ``dtype``."""
    codes = unpack(run.codes, run.bits, run.head_dim)
    blocks = _to_blocks(codes, run.group, run.axis)
    values = dequantize_blocks(blocks, run.scale, run.zero.to(torch.int32), _format(run.bits), dtype)
    return _from_blocks(values, run.axis)


# ---------------------------------------------------------------- one attention layer

class QuantizedKVLayer(DynamicLayer):
    """One attention layer's cache: quantized older tokens, a float residual (``keys``/``values``).

    ``sliding_window``: keep only what a sliding layer of that window can still attend to.
    """

    is_croppable = False

    def __init__(self, spec: KVCacheSpec, sliding_window: int | None = None):
        super().__init__()
        self.spec = spec
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.cumulative_length = 0  # tokens seen, what the position ids and masks count
        self._quantized_keys: QuantizedRun | None = None
        self._quantized_values: QuantizedRun | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        # Set here, not left to the parent: transformers 5.24 stopped setting ``dtype`` there.
        self.dtype, self.value_dtype = key_states.dtype, value_states.dtype
        batch, heads, _, head_dim = key_states.shape
        self.kv_shape = (batch, heads, head_dim)
        self.group = self.spec.group_for(head_dim)
        # Per-channel keys quantize whole blocks of tokens; per-token groups can move one at a time.
        self.block = self.group if self.spec.key_axis == "channel" else 1
        self.keys = key_states.new_empty((batch, heads, 0, head_dim))
        self.values = value_states.new_empty((batch, heads, 0, value_states.shape[-1]))

    @property
    def quantized_length(self) -> int:
        return 0 if self._quantized_keys is None else self._quantized_keys.length

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        past_keys, past_values = self._stored()
        if self.is_sliding:
            # What transformers' sliding layer returns: its last window - 1 tokens, then the new ones.
            keep = max(self.sliding_window - 1, 0)
            past_keys = past_keys[:, :, past_keys.shape[2] - min(keep, past_keys.shape[2]):]
            past_values = past_values[:, :, past_values.shape[2] - min(keep, past_values.shape[2]):]
        out_keys = torch.cat([past_keys, key_states], dim=-2)
        out_values = torch.cat([past_values, value_states], dim=-2)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._flush()
        if self.is_sliding:
            self._drop_outside_window()
        return out_keys, out_values

    def _stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._quantized_keys is None:
            return self.keys, self.values
        keys = dequantize_run(self._quantized_keys, self.dtype)
        values = dequantize_run(self._quantized_values, self.value_dtype)
        return torch.cat([keys, self.keys], dim=-2), torch.cat([values, self.values], dim=-2)

    def _flush(self) -> None:
        """Move the float tokens older than the residual window into quantized storage."""
        n_move = (self.keys.shape[2] - self.spec.residual) // self.block * self.block
        if n_move <= 0:
            return
        keys = quantize_run(self.keys[:, :, :n_move], self.spec.bits, self.group, self.spec.key_axis)
        values = quantize_run(self.values[:, :, :n_move], self.spec.bits, self.group, "token")
        # Copies, not views: a view would keep the moved tokens' float storage alive.
        self.keys, self.values = self.keys[:, :, n_move:].clone(), self.values[:, :, n_move:].clone()
        if self._quantized_keys is None:
            self._quantized_keys, self._quantized_values = keys, values
        else:
            self._quantized_keys = self._quantized_keys.append(keys)
            self._quantized_values = self._quantized_values.append(values)

    def _drop_outside_window(self) -> None:
        excess = self.quantized_length + self.keys.shape[2] - max(self.sliding_window - 1, 0)
        if excess <= 0:
            return
        n_quant = min(self.quantized_length, excess // self.block * self.block)
        if n_quant == self.quantized_length and n_quant > 0:
            self._quantized_keys = self._quantized_values = None
        elif n_quant > 0:
            self._quantized_keys = self._quantized_keys.drop_first(n_quant)
            self._quantized_values = self._quantized_values.drop_first(n_quant)
        if self._quantized_keys is None:
            n_float = excess - n_quant
            self.keys, self.values = self.keys[:, :, n_float:].clone(), self.values[:, :, n_float:].clone()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if not self.is_sliding:
            return self.cumulative_length + query_length, 0
        window = self.sliding_window
        offset = max(self.cumulative_length - window + 1, 0)
        if self.cumulative_length >= window:
            return window - 1 + query_length, offset
        return self.cumulative_length + query_length, offset

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sliding_window if self.is_sliding else -1

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self._quantized_keys = self._quantized_values = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the quantized KV cache cannot be cropped (assisted decoding needs a "
                                  "float cache)")

    def _map_batch(self, fn) -> None:
        if not self.is_initialized:
            return
        self.keys, self.values = fn(self.keys), fn(self.values)
        if self._quantized_keys is not None:
            self._quantized_keys = self._quantized_keys.map_batch(fn)
            self._quantized_values = self._quantized_values.map_batch(fn)
        self.kv_shape = (self.keys.shape[0], *self.kv_shape[1:])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices])


class QuantizedKVCache(Cache):
    """The cache for ``model.generate(..., past_key_values=cache)`` or a chunked forward.

    One layer per decoder layer of ``config`` (its text config for multimodal models), built from
    transformers' own layer types, so sliding and full layers sit where the model expects them.
    """

    def __init__(self, config, spec: KVCacheSpec):
        text = config.get_text_config(decoder=True)
        head_dim = getattr(text, "head_dim", None) or _ratio(text, "hidden_size", "num_attention_heads")
        if head_dim:
            spec.group_for(head_dim)  # a group that does not fit fails here, not mid-forward
        if get_layer_types_and_kwargs is None:
            import transformers

            raise InputError(f"the quantized KV cache needs a newer transformers than "
                             f"{transformers.__version__} (one with cache_utils.get_layer_types_and_kwargs)")
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
        layers = []
        for kind, kwargs in zip(layer_types, layer_kwargs):
            if kind == "full_attention":
                layers.append(QuantizedKVLayer(spec))
            elif kind in ("sliding_attention", "chunked_attention"):
                layers.append(QuantizedKVLayer(spec, kwargs["sliding_window"]))
            elif kind == "dummy":  # layers that reuse another layer's keys and values hold none
                layers.append(DummyLayer())
            else:
                raise InputError(f"{text.model_type}: layer type {kind!r} has no quantized KV cache "
                                 f"(supported: full and sliding-window attention)")
        super().__init__(layers=layers)
        self.spec = spec


def _ratio(config, a: str, b: str) -> int | None:
    num, den = getattr(config, a, None), getattr(config, b, None)
    return num // den if isinstance(num, int) and isinstance(den, int) and den else None


# ---------------------------------------------------------------- memory

@dataclass(frozen=True)
class KVMemory:
    """Bytes a cache holds, against a float cache of the same model holding the same tokens.

    ``held_bytes``: everything held now (codes, scales, zeros, float residual), measured from the
    tensors. ``float_bytes``: what transformers' DynamicCache would hold (same float dtype, same
    sliding windows). ``quantized_bytes_per_token``: what one more token costs once quantized,
    summed over layers, measured from the quantized tensors with floating-point ones counted at
    2 bytes (their size in a float16 model); None while some layer holds no quantized token.
    ``float16_bytes_per_token``: a float16 cache's cost of one token, summed over layers.
    """

    tokens: int
    batch: int
    held_bytes: int
    float_bytes: int
    quantized_bytes_per_token: float | None
    float16_bytes_per_token: float

    @property
    def bytes_per_token(self) -> float:
        return self.held_bytes / max(self.batch * self.tokens, 1)

    @property
    def saving(self) -> float:
        """float cache bytes / held bytes, at the current length."""
        return self.float_bytes / self.held_bytes if self.held_bytes else 1.0

    @property
    def quantized_saving(self) -> float | None:
        """float16 bytes per token / quantized bytes per token: the saving as the context grows."""
        q = self.quantized_bytes_per_token
        return self.float16_bytes_per_token / q if q else None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "bytes_per_token": self.bytes_per_token,
                "saving": self.saving, "quantized_saving": self.quantized_saving}

    def summary(self, what: str = "KV cache") -> str:
        line = (f"{what}: {self.tokens} tokens, {self.bytes_per_token:,.0f} bytes/token held "
                f"({self.saving:.2f}x less than the float cache)")
        if self.quantized_bytes_per_token is None:
            return line + "; no layer has quantized tokens yet (all within the float residual)"
        return line + (f"; {self.quantized_bytes_per_token:,.0f} bytes per quantized token "
                       f"({self.quantized_saving:.2f}x less than float16)")


def storage_bytes(obj, float_size: int | None = None) -> int:
    """Bytes of every tensor inside ``obj`` (tensors, tensor subclasses such as optimum-quanto's,
    dataclasses, tuples, dicts); floating-point tensors at ``float_size`` bytes when given."""
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):
            names, _ = obj.__tensor_flatten__()
            return sum(storage_bytes(getattr(obj, n), float_size) for n in names)
        size = float_size if float_size and obj.is_floating_point() else obj.element_size()
        return obj.numel() * size
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(storage_bytes(getattr(obj, f.name), float_size) for f in dataclasses.fields(obj))
    if isinstance(obj, (tuple, list)):
        return sum(storage_bytes(v, float_size) for v in obj)
    if isinstance(obj, dict):
        return sum(storage_bytes(v, float_size) for v in obj.values())
    return 0


def quantized_length(layer) -> int:
    """Tokens a layer holds in quantized form (ours, or transformers' QuantizedLayer; 0 for float)."""
    if isinstance(layer, QuantizedKVLayer):
        return layer.quantized_length
    if getattr(layer, "_quantized_keys", None) is None:
        return 0
    residual = layer.keys.shape[-2] if layer.keys is not None and layer.keys.dim() == 4 else 0
    return layer.cumulative_length - residual


def _layer_dims(layer) -> tuple[int, int, int] | None:
    """(batch, kv heads, head dim) of an initialized layer, whatever kind of cache it belongs to."""
    if getattr(layer, "kv_shape", None):
        return layer.kv_shape
    for t in (getattr(layer, "_quantized_keys", None), layer.keys):
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            return t.shape[0], t.shape[1], t.shape[3]
    return None


def kv_memory(cache: Cache) -> KVMemory:
    """Measure ``cache`` (ours, transformers' DynamicCache or QuantizedCache) after a forward."""
    tokens = batch = held = float_bytes = 0
    per_token: float | None = 0.0
    fp16_per_token = 0.0
    for layer in cache.layers:
        dims = _layer_dims(layer) if getattr(layer, "is_initialized", False) else None
        if (DummyLayer is not None and isinstance(layer, DummyLayer)) or dims is None:
            continue
        b, heads, head_dim = dims
        seen = layer.get_seq_length()
        tokens, batch = max(tokens, seen), b
        window = getattr(layer, "sliding_window", None)
        float_tokens = min(seen, window - 1) if getattr(layer, "is_sliding", False) and window else seen
        element = layer.keys.element_size()  # the float tokens' (layers carry no dtype in 5.24)
        float_bytes += 2 * b * heads * head_dim * float_tokens * element
        fp16_per_token += 2 * heads * head_dim * 2
        quantized = (getattr(layer, "_quantized_keys", None), getattr(layer, "_quantized_values", None))
        held += storage_bytes(quantized) + storage_bytes((layer.keys, layer.values))
        n_quant = quantized_length(layer)
        if per_token is not None and n_quant > 0:
            per_token += storage_bytes(quantized, float_size=2) / (b * n_quant)
        else:
            per_token = None
    return KVMemory(tokens, batch, held, float_bytes, per_token, fp16_per_token)
