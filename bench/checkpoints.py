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

    Checkpoints that quantize activations (W8A8 int-quantized / float-quantized) take the regular
    route instead: ``dequantize=True`` leaves the model dense and would drop the activation
    quantization; without it compressed-tensors decompresses the 8-bit weights and quantizes every
    layer's input (per token or with the stored scale) on each forward, as the scheme says.
    """
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    qc = json.loads((Path(path) / "config.json").read_text()).get("quantization_config") or {}
    if any(g.get("input_activations") for g in (qc.get("config_groups") or {}).values()):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
    return model.eval()


def load_peer(path: Path):
    """A peer's checkpoint, by the ``loader`` its bench.json names (compressed-tensors if none).

    ``bitsandbytes`` (bench/peers/bnb_nf4.py): plain ``from_pretrained``, which rebuilds
    bitsandbytes' own Linear4bit layers, so the peer's forward is bitsandbytes' code.

    ``gptq`` (bench/peers/gptqmodel_quantize.py): a GPTQ-layout checkpoint. Its reader,
    GPTQModel, lives only in the peer's venv; lowbit's GPTQ import translates the packed codes,
    zeros and scales exactly (integers, float16 scales widened), so the weights evaluated are the
    peer's, dequantized as ``(q − z)·s``.
    """
    loader = read_meta(path).get("loader")
    if loader == "bitsandbytes":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()
    if loader == "gptq":
        return load_lowbit(path)
    return load_compressed_tensors(path)


def storage(path: Path) -> dict:
    """Bits per quantized weight and size on disk, read the same way for every tool's checkpoint.

    A checkpoint lowbit cannot inspect (bitsandbytes) carries both numbers in its bench.json,
    counted from its own saved tensors by the script that wrote it.
    """
    meta = read_meta(path)
    if meta.get("loader") == "bitsandbytes":
        return {"bits_per_weight": meta["bits_per_weight"], "size_mb": meta["size_mb"]}
    from lowbit.eval import checkpoint_size_mb
    from lowbit.io import inspect

    info = inspect(path)
    return {"bits_per_weight": info["bits_per_weight"], "size_mb": round(checkpoint_size_mb(path), 3)}
