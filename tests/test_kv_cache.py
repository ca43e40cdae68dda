"""The quantized KV cache: numerics against float64, storage, sliding windows, memory, generation."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

import tiny_models
from lowbit.errors import InputError
from lowbit.modules.kv_cache import (
    KVCacheSpec, QuantizedKVCache, QuantizedKVLayer, dequantize_run, kv_memory, kv_spec, quantize_run,
    storage_bytes,
)
from lowbit.formats.packing import unpack


def reference_quantize(x: torch.Tensor, bits: int, group: int, axis: str):
    """float64 reference: per block min/max widened to 0, scale = range/qmax rounded up to
    float16, integer zero, codes = clamp(round(x/scale) + zero). Returns (codes, scale) per element."""
    qmax = 2 ** bits - 1
    b, h, t, d = x.shape
    x = x.double()
    blocks = x.reshape(b, h, t, d // group, group) if axis == "token" else \
        x.reshape(b, h, t // group, group, d).transpose(-1, -2)
    lo = blocks.amin(-1, keepdim=True).clamp(max=0)
    hi = blocks.amax(-1, keepdim=True).clamp(min=0)
    exact = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float16).tiny)
    scale = exact.half().double()
    scale = torch.where(scale < exact, torch.nextafter(scale.half(), torch.tensor(65504.0).half()).double(), scale)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    codes = (torch.round(blocks / scale) + zero).clamp(0, qmax)
    scale = scale.expand_as(blocks)

    def back(t):
        return t.reshape(b, h, t.shape[2], d) if axis == "token" else t.transpose(-1, -2).reshape(b, h, -1, d)
    return back(codes).to(torch.uint8), back(scale), exact


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("axis", ["token", "channel"])
def test_quantize_run_matches_float64_reference_and_bound(bits, axis):
    torch.manual_seed(bits)
    group = 8
    x = torch.randn(2, 3, 24, 40) * torch.linspace(0.1, 5, 40)  # channels of different ranges
    x[0, 1, 3] += 7.0  # an outlier token
    run = quantize_run(x, bits, group, axis)
    ref_codes, ref_scale, exact = reference_quantize(x, bits, group, axis)
    codes = unpack(run.codes, bits, x.shape[-1])
    assert torch.equal(codes, ref_codes)
    # Stored scale: the float16 value at or just above the exact one.
    assert (run.scale.double() >= exact.squeeze(-1)).all()
    assert (run.scale.double() <= exact.squeeze(-1) * (1 + 2 ** -10)).all()
    # Every value within half a step of its group's grid (float32 arithmetic on top).
    err = (dequantize_run(run, torch.float32).double() - x.double()).abs()
    assert (err <= ref_scale / 2 * (1 + 1e-6) + x.double().abs() * 2 ** -22).all()


def test_int4_packs_two_codes_per_byte_and_round_trips():
    x = torch.randn(1, 2, 16, 64)
    run = quantize_run(x, 4, 64, "token")
    assert run.codes.dtype == torch.int32 and run.codes.numel() * 4 == x.numel() // 2
    assert run.scale.dtype == torch.float16 and run.zero.dtype == torch.uint8
    assert run.scale.shape == (1, 2, 16, 1)
    again = quantize_run(dequantize_run(run, torch.float32), 4, 64, "token")
    # Grid points quantize to themselves: a second pass changes no code.
    assert torch.equal(unpack(again.codes, 4, 64), unpack(run.codes, 4, 64))


def test_per_channel_keys_beat_per_token_on_an_outlier_channel():
    torch.manual_seed(0)
    keys = torch.randn(1, 2, 64, 32)
    keys[..., 5] += 30.0  # a large, consistently signed channel, as keys have
    errors = {}
    for axis in ("token", "channel"):
        back = dequantize_run(quantize_run(keys, 4, 32, axis), torch.float32)
        errors[axis] = (back - keys).norm() / keys.norm()
    assert errors["channel"] < errors["token"] / 3


# ---- one layer

def _feed(layer, keys, values, chunks):
    start = 0
    for c in chunks:
        yield start, layer.update(keys[:, :, start:start + c], values[:, :, start:start + c])
        start += c


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_layer_keeps_a_float_residual_and_quantizes_each_token_once(axis):
    torch.manual_seed(1)
    spec = KVCacheSpec(bits=4, group_size=8, residual=12, key_axis=axis)
    keys, values = torch.randn(2, 2, 60, 16), torch.randn(2, 2, 60, 16)
    layer = QuantizedKVLayer(spec)
    block = 8 if axis == "channel" else 1
    n_quant = 0
    for start, (k, v) in _feed(layer, keys, values, [5, 7, 1, 16, 3, 28]):
        end = k.shape[2]
        # Tokens stored before this call: quantized ones as one-shot quantization gives them
        # (appending never re-quantizes), float ones exact; the new ones exact.
        if n_quant:
            expect_k = dequantize_run(quantize_run(keys[:, :, :n_quant], 4, 8, axis), torch.float32)
            expect_v = dequantize_run(quantize_run(values[:, :, :n_quant], 4, 8, "token"), torch.float32)
            assert torch.equal(k[:, :, :n_quant], expect_k) and torch.equal(v[:, :, :n_quant], expect_v)
        assert torch.equal(k[:, :, n_quant:], keys[:, :, n_quant:end])
        assert torch.equal(v[:, :, n_quant:], values[:, :, n_quant:end])
        n_quant = max(0, (end - spec.residual) // block * block)
        assert layer.quantized_length == n_quant and layer.get_seq_length() == end
        assert spec.residual <= layer.keys.shape[2] < spec.residual + block or end < spec.residual


def test_sliding_layer_follows_transformers_sliding_layer():
    torch.manual_seed(2)
    window = 6
    keys, values = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    ours = QuantizedKVLayer(KVCacheSpec(bits=8, group_size=8, residual=2, key_axis="channel"), window)
    theirs = DynamicSlidingWindowLayer(sliding_window=window)
    start = 0
    for c in [1, 3, 2, 9, 1, 1, 4, 19]:
        assert ours.get_mask_sizes(c) == theirs.get_mask_sizes(c)
        k, v = ours.update(keys[:, :, start:start + c], values[:, :, start:start + c])
        k_ref, v_ref = theirs.update(keys[:, :, start:start + c], values[:, :, start:start + c])
        start += c
        assert k.shape == k_ref.shape and ours.get_seq_length() == theirs.get_seq_length()
        assert torch.equal(k[:, :, -c:], k_ref[:, :, -c:])
        assert (k - k_ref).abs().max() < 0.05 and (v - v_ref).abs().max() < 0.05  # int8
        # Storage stays bounded by the window (plus one partial block of per-channel keys).
        assert ours.quantized_length + ours.keys.shape[2] <= window - 1 + 8


def test_reorder_cache_equals_feeding_the_reordered_batch():
    torch.manual_seed(3)
    spec = KVCacheSpec(bits=4, group_size=8, residual=3, key_axis="channel")
    keys, values = torch.randn(3, 2, 30, 16), torch.randn(3, 2, 30, 16)
    order = torch.tensor([2, 0, 1])
    a, b = QuantizedKVLayer(spec), QuantizedKVLayer(spec)
    a.update(keys[:, :, :20], values[:, :, :20])
    a.reorder_cache(order)
    b.update(keys[order, :, :20], values[order, :, :20])
    ka, va = a.update(keys[order, :, 20:], values[order, :, 20:])
    kb, vb = b.update(keys[order, :, 20:], values[order, :, 20:])
    assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_spec_validation():
    assert kv_spec("int8").residual == 0 and kv_spec("int4").residual == 128
    assert kv_spec("int4", group_size=32, residual=16, key_axis="channel") == \
        KVCacheSpec(bits=4, group_size=32, residual=16, key_axis="channel")
    for bad in (dict(bits=3), dict(group_size=0), dict(residual=-1), dict(key_axis="head")):
        with pytest.raises(InputError):
            KVCacheSpec(**bad)
    with pytest.raises(InputError, match="int4, int8"):
        kv_spec("fp8")
    with pytest.raises(InputError, match="head dimension 16"):
        QuantizedKVCache(tiny_models.build("llama").config, kv_spec("int4", group_size=12))


# ---- whole models

def _sliding_mistral():
    config = tiny_models.CONFIGS["mistral"]()
    config.sliding_window = 8
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).float().eval()


def _model(arch):
    return _sliding_mistral() if arch == "mistral-sliding" else tiny_models.build(arch)


@pytest.mark.parametrize("arch", tiny_models.ARCHS + ["mistral-sliding", "gemma3-mm"])
@torch.inference_mode()
def test_chunked_forward_through_the_cache_stays_close_to_float(arch):
    """Every architecture table's model runs with the cache, sliding layers included. int8 stays
    within 1% of the logits' spread (0.08-0.35% measured); int4's step is 17x int8's, and its
    error is 15-20x larger (so the quantized cache is really what is read back)."""
    model = _model(arch)
    if arch == "mistral-sliding":
        assert any(QuantizedKVCache(model.config, kv_spec("int8", 8)).is_sliding)
    ids = tiny_models.input_ids(2, 48)
    full = model(ids, use_cache=False).logits
    errors = {}
    for name in ("int8", "int4"):
        cache = QuantizedKVCache(model.config, kv_spec(name, group_size=8, residual=0))
        chunks = [model(ids[:, s:s + 8], past_key_values=cache, use_cache=True).logits for s in range(0, 48, 8)]
        errors[name] = ((torch.cat(chunks, 1) - full).abs().mean() / full.std()).item()
    assert errors["int8"] < 0.01 and errors["int8"] * 8 < errors["int4"]


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_memory_accounting_is_exact(arch):
    model = tiny_models.build(arch)  # 2 layers, 2 kv heads, head dim 16; gemma2's first layer slides (8)
    spec = KVCacheSpec(bits=4, group_size=8, residual=4, key_axis="token")
    cache = QuantizedKVCache(model.config, spec)
    ids = tiny_models.input_ids(1, 37)
    with torch.inference_mode():
        for s in range(0, 37, 10):
            model(ids[:, s:s + 10], past_key_values=cache, use_cache=True)
    mem = kv_memory(cache)
    heads, dim = 2, 16
    per_token_quant = 2 * heads * (dim * 4 // 8 + (dim // 8) * 3)  # K and V: codes + fp16 scale + u8 zero
    held = float_bytes = 0
    for layer in cache.layers:
        kept = min(37, 7) if layer.is_sliding else 37  # what a float cache keeps
        float_bytes += 2 * heads * dim * 4 * kept
        held += per_token_quant * layer.quantized_length + 2 * heads * dim * 4 * layer.keys.shape[2]
    assert mem.tokens == 37 and mem.held_bytes == held and mem.float_bytes == float_bytes
    assert mem.quantized_bytes_per_token == 2 * per_token_quant
    assert mem.float16_bytes_per_token == 2 * 2 * heads * dim * 2
    assert mem.quantized_saving == pytest.approx(64 / 28)  # 2 bytes x 16 / (8 + 6) per head-token


def test_smollm2_shaped_saving_meets_the_bars():
    """Head dim 64, group 64: int8 costs 8.375 bits per value, int4 4.375, against float16's 16."""
    keys = torch.randn(1, 3, 256, 64)
    for name, bar in (("int8", 1.9), ("int4", 3.5)):
        layer = QuantizedKVLayer(kv_spec(name, residual=0))
        layer.update(keys, keys)
        quantized = (layer._quantized_keys, layer._quantized_values)
        per_token = storage_bytes(quantized) / 256
        assert 2 * 3 * 64 * 2 / per_token > bar


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_generate_with_int8_cache_gives_the_float_cache_tokens(arch):
    model = tiny_models.build(arch)
    prompt = tiny_models.input_ids(1, 10, seed=4)
    with torch.inference_mode():
        ref = model.generate(prompt, max_new_tokens=12, do_sample=False, past_key_values=DynamicCache(),
                             pad_token_id=0)
        cache = QuantizedKVCache(model.config, kv_spec("int8", group_size=8))
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, past_key_values=cache, pad_token_id=0)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == 21  # prompt + 11 fed back; every one of them quantized (residual 0)
    assert kv_memory(cache).quantized_bytes_per_token is not None
