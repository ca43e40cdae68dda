"""Tiny randomly initialised models, one per architecture table, built from configs (no download).

``build(arch)`` returns an eval-mode float32 model with two decoder blocks and small widths whose
input dimensions are multiples of 32 (hidden 64; intermediate 128 or 96; attention heads*head_dim
64 or 96), so group size 32 and per-channel both fit every linear inside the blocks. Query heads
outnumber key/value heads wherever the family supports it, so grouped-query attention is exercised.

Weights are drawn with ``initializer_range`` 0.1 (the families' default is 0.02): a wider draw makes
each block's contribution to the residual stream large enough that a wrong weight shows in the
logits, which is what the tests built on these models look at.
"""
from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM, Gemma2Config, Gemma3Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
    LlamaConfig, MistralConfig, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config, SiglipVisionConfig,
)

VOCAB = 256
INIT = 0.1
# Shared by the decoder-only families that follow llama's config names.
_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                   initializer_range=INIT, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama():
    return LlamaConfig(**_LLAMA_LIKE)


def _mistral():
    return MistralConfig(**_LLAMA_LIKE, sliding_window=None)


def _qwen2():
    # q/k/v carry biases in qwen2.
    return Qwen2Config(**_LLAMA_LIKE)


def _qwen3():
    # Its default head_dim is 128 regardless of hidden size; q_norm/k_norm work on head_dim.
    return Qwen3Config(**_LLAMA_LIKE, head_dim=16)


def _gemma():
    # head_dim is independent of hidden size in gemma: 4 heads x 24 = 96 = o_proj's in-features.
    return GemmaConfig(**{**_LLAMA_LIKE, "intermediate_size": 96}, head_dim=24)


def _gemma2():
    return Gemma2Config(**_LLAMA_LIKE, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)


def _gemma3():
    # The text-only model (Gemma3ForCausalLM, model_type gemma3_text); one sliding, one full layer.
    return Gemma3TextConfig(**_LLAMA_LIKE, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                            layer_types=["sliding_attention", "full_attention"])


def _phi3():
    # Fused qkv_proj and gate_up_proj; pad/bos/eos default to ids beyond our vocab.
    return Phi3Config(**_LLAMA_LIKE)


def _opt(do_layer_norm_before: bool = True):
    # Pre-layer-norm OPT (every size but 350m); biases everywhere, ReLU MLP.
    return OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                     num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=256,
                     init_std=INIT, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                     do_layer_norm_before=do_layer_norm_before)


def _gpt2():
    # transformers.Conv1D layers (weight stored (in, out)); MLP width 4 x 64 = 256.
    return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                      initializer_range=INIT, bos_token_id=0, eos_token_id=0)


def _opt_post_ln():
    # OPT-350m's wiring: layer norms after the residual adds, no final norm.
    return _opt(do_layer_norm_before=False)


def _gemma3_mm():
    # What AutoModelForCausalLM builds for model_type gemma3: Gemma3ForConditionalGeneration, the
    # text decoder under model.language_model beside a (tiny) SigLIP vision tower.
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    return Gemma3Config(text_config=_gemma3(), vision_config=vision, mm_tokens_per_image=1,
                        initializer_range=INIT)


CONFIGS = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma": _gemma,
    "gemma2": _gemma2, "gemma3": _gemma3, "phi3": _phi3, "opt": _opt, "gpt2": _gpt2,
}
ARCHS = sorted(CONFIGS)
# Other rows of the architecture tables, for the table tests (not part of ARCHS).
VARIANTS = {"opt-post-ln": _opt_post_ln, "gemma3-mm": _gemma3_mm}


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model of ``arch``: a name in ARCHS or in VARIANTS."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config({**CONFIGS, **VARIANTS}[arch]())
    return model.float().eval()


def input_ids(batch: int = 2, seqlen: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seqlen), generator=g)


@torch.no_grad()
def logit_error(model: torch.nn.Module, ids: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Relative Frobenius error of ``model``'s logits on ``ids`` against ``reference_logits``."""
    return ((model(ids).logits - reference_logits).norm() / reference_logits.norm()).item()
