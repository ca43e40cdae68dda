"""Load the benchmark's checkpoints for evaluation, and read what each one measured about itself.

lowbit's checkpoints load through ``lowbit.io.load`` (lowbit's own QuantLinear runtime, what a
lowbit user runs). A peer's compressed-tensors checkpoint loads through plain transformers with
the ``compressed-tensors`` package decompressing it (no lowbit code touches its weights).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

BENCH_META = "bench.json"


def read_meta(path: Path) -> dict:
    return json.loads((Path(path) / BENCH_META).read_text())


def load_lowbit(path: Path):
    from lowbit.io import load

    model, _ = load(path)
    return model.eval()


def load_compressed_tensors(path: Path):
    """A compressed-tensors checkpoint as a dense float32 model, decompressed at load.

    ``dequantize=True``: transformers 5.23 with compressed-tensors 0.20 cannot load an
    asymmetric pack-quantized checkpoint in its compressed form (it builds ``weight_zero_point``
    unpacked, ``(out, groups)``, and refuses the packed ``(out/8, groups)`` on disk, for
    llm-compressor's own output too); decompressing at load reads the packed layout correctly.
    """
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
    return model.eval()


def storage(path: Path) -> dict:
    """Bits per quantized weight and size on disk, read the same way for every tool's checkpoint."""
    from lowbit.eval import checkpoint_size_mb
    from lowbit.io import inspect

    info = inspect(path)
    return {"bits_per_weight": info["bits_per_weight"], "size_mb": round(checkpoint_size_mb(path), 3)}
