"""bench/checkpoints.load_peer on a GPTQ-layout peer checkpoint (GPTQModel's, ``loader: gptq``):
it must read the file through lowbit's GPTQ import, not the compressed-tensors route that plain
transformers takes (which needs GPTQModel installed), and give the model those tensors define."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.formats import FormatSpec
from lowbit.io import save
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from checkpoints import load_peer, storage  # noqa: E402


def test_gptq_peer_checkpoint_loads_to_the_model_its_tensors_define(tmp_path):
    # float16 scales: the GPTQ layout stores them so, and the file then holds this model exactly.
    spec = FormatSpec(bits=4, sym=False, group_size=32, scale_dtype="float16")
    model = tiny_models.build("llama")
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),)), progress=False)
    path = save(model, None, tmp_path / "w4a16-gptq", format="gptq")
    (Path(path) / "bench.json").write_text(json.dumps(
        {"tool": "gptqmodel", "recipe": "w4a16-gptq", "loader": "gptq"}))

    peer = load_peer(path)
    layers = [m for m in peer.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == sum(isinstance(m, QuantLinear) for m in model.modules()) > 0
    ids = tiny_models.input_ids()
    with torch.no_grad():
        assert torch.equal(peer(ids).logits, model(ids).logits)
    # Bits per weight counted from the GPTQ tensors on disk (g_idx included: one int32 per input).
    tensors = load_file(Path(path) / "model.safetensors")
    stored = sum(t.numel() * t.element_size() * 8 for k, t in tensors.items()
                 if k.rpartition(".")[2] in ("qweight", "qzeros", "scales", "g_idx"))
    weights = sum(m.in_features * m.out_features for m in layers)
    assert abs(storage(path)["bits_per_weight"] - stored / weights) < 1e-3
