"""Model size on disk and in memory, and storage bits per quantized weight.

Sizes are in MB of 10^6 bytes (as the Hugging Face hub shows them).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import InputError

MB = 1_000_000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def checkpoint_size_mb(path) -> float:
    """Bytes of the weight files (safetensors, bin, gguf, pt) in a checkpoint directory, or of one file."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / MB
    if not p.is_dir():
        raise InputError(f"checkpoint not found: {path}")
    files = [f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise InputError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in the directory")
    return sum(f.stat().st_size for f in files) / MB


def model_size_mb(model: nn.Module) -> float:
    """Bytes of the model's parameters and persistent buffers; tied tensors count once."""
    seen, total = set(), 0
    tensors = list(model.parameters())
    for module in model.modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        tensors += [b for name, b in module.named_buffers(recurse=False) if name not in skip]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total / MB


def quantized_linears(model: nn.Module):
    """``(name, module)`` of every quantized linear: packed weight-only ones (QuantLinear and its
    kin) and weight-and-activation ones (W8A8, LLM.int8, FP8: unpacked 8-bit ``weight_codes``)."""
    for name, module in model.named_modules():
        if (hasattr(module, "weight_packed") or hasattr(module, "weight_codes")) and hasattr(module, "spec"):
            yield name, module


def storage_bits(module: nn.Module) -> int:
    """Bits one quantized linear needs: its packed codes, its scales, and its zeros at code width
    (weight-and-activation layers: their 8-bit codes, row scales and static input scale).

    Zeros are held as int32 in memory but stored packed at the code width in checkpoints
    (compressed-tensors packs ``weight_zero_point``), so they count ``bits`` each.
    Double-quantized scales count their int8 codes, float32 second-level scales and offset.
    """
    if hasattr(module, "weight_codes"):  # W8A8 / FP8: 8-bit codes, a scale per row, a static input scale
        codes = module.weight_codes
        bits = codes.numel() * codes.element_size() * 8
        for t in (module.weight_scale, getattr(module, "input_scale", None)):
            if t is not None:
                bits += t.numel() * t.element_size() * 8
        return bits
    bits = module.weight_packed.numel() * 32
    bits += module.weight_scale.numel() * module.weight_scale.element_size() * 8
    for name in ("weight_scale_scale", "weight_scale_offset", "weight_global_scale"):
        extra = getattr(module, name, None)
        if extra is not None:
            bits += extra.numel() * extra.element_size() * 8
    zero = getattr(module, "weight_zero", None)
    if zero is not None:
        bits += zero.numel() * module.spec.bits
    return bits


def weight_count(model: nn.Module) -> int:
    """Number of weights held by the quantized linears of ``model``."""
    return sum(m.in_features * m.out_features for _, m in quantized_linears(model))


def bits_per_weight(model: nn.Module) -> float | None:
    """Storage bits per weight over the quantized linears; None when the model has none."""
    count = weight_count(model)
    if count == 0:
        return None
    return sum(storage_bits(m) for _, m in quantized_linears(model)) / count
