"""Tiny randomly initialised models, one per architecture table, built from configs (no download).

``build(arch)`` returns an eval-mode float32 model with two decoder blocks and small widths whose
input dimensions are multiples of 32, so group sizes 32 and per-channel both fit.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

VOCAB = 256


def _llama():
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


CONFIGS = {
    "llama": _llama,
}
ARCHS = sorted(CONFIGS)


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch]())
    return model.float().eval()


def input_ids(batch: int = 2, seqlen: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seqlen), generator=g)
