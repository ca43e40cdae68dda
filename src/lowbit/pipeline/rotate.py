"""Rotate a model's residual stream (R1) and each attention head's values (R2), offline.

The transform (``algorithms/rotation.py``) in model terms, driven by the architecture table:

1. every norm that feeds a group (``rmsnorm``: ``n(h)·w``; ``rmsnorm_offset``: ``n(h)·(1 + w)``)
   has its weight folded into the group's input columns, ``W ← W diag(w)``, and is reset to the
   identity; the final norm likewise into the head;
2. readers of the stream (the norm-fed linears, the head) ``W ← W Q``; writers (the embeddings,
   the linear-fed linears: o_proj, down_proj) ``W ← Qᵀ W``, ``b ← Qᵀ b``, ``E ← E Q``;
3. R2: per head, the value rows ``W_v ← Hᵀ W_v`` (and bias) and o_proj's columns ``W_o ← W_o H``
   with one ``head_dim`` matrix ``H`` for every head, so under grouped-query attention each
   query head reads its value head through the same ``H`` it is undone by.

Module types stay the same, so the checkpoint loads through plain ``from_pretrained``. A tied
head (SmolLM2) must hold ``diag(w_final) Q``-scaled weights the embeddings do not, so it is
untied: the checkpoint grows by one vocab × hidden matrix and its config says
``tie_word_embeddings: false``.

Only pre-norm RMSNorm models qualify: a LayerNorm subtracts the mean, which a rotation does not
keep, and a norm on a writer's output before the residual add (Gemma 2/3's post-norms) weighs
channels of the rotated stream. Those are refused with an :class:`InputError`.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..algorithms.rotation import RotationConfig, rotation_matrix
from ..arch import ArchMap, LinearGroup, arch_for, blocks_of, get_module
from ..errors import InputError
from .transforms import register_model_transform

NORM_KINDS = ("rmsnorm", "rmsnorm_offset")


def _norm_gain(norm: nn.Module, kind: str) -> torch.Tensor:
    """The per-channel factor the norm multiplies by, float64 ``(hidden,)``."""
    w = norm.weight.detach().double()
    return 1 + w if kind == "rmsnorm_offset" else w


def _reset_norm(norm: nn.Module, kind: str) -> None:
    norm.weight.data.fill_(0.0 if kind == "rmsnorm_offset" else 1.0)


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.data.copy_(value.to(param.dtype))


def check_rotatable(block: nn.Module, arch: ArchMap) -> None:
    """InputError unless every residual-stream reader is fed by an RMSNorm, every block-level
    norm feeds a group, and a final norm feeds the head."""
    if arch.conv1d:
        raise InputError(f"rotate: {arch.name} is not supported (Conv1D layers, LayerNorm)")
    if not arch.final_norm:
        raise InputError(f"rotate: {arch.name} has no final norm (post-norm wiring)")
    feeders = set()
    for g in arch.groups:
        if g.feeder_kind == "linear":
            continue
        if g.feeder_kind not in NORM_KINDS:
            raise InputError(f"rotate: {arch.name} feeds {g.linears} from a {g.feeder_kind!r}; rotation "
                             f"needs RMSNorm feeders (a LayerNorm subtracts the mean, which a rotation "
                             f"does not keep)")
        feeders.add(g.feeder)
    for name, child in block.named_children():
        if "norm" in type(child).__name__.lower() and name not in feeders:
            raise InputError(f"rotate: {arch.name}'s {name} ({type(child).__name__}) normalises a writer's "
                             f"output on the residual stream; its weights do not commute with a rotation")


def _rotate_heads(block: nn.Module, g: LinearGroup, config: RotationConfig) -> dict | None:
    """R2 on a linear-fed group inside attention (v → o): None when it is not one."""
    parent_path = g.linears[0].rpartition(".")[0]
    attn = get_module(block, parent_path) if parent_path else block
    head_dim = int(getattr(attn, "head_dim", 0) or 0)
    if head_dim <= 0:
        return None
    o = get_module(block, g.linears[0])
    v = get_module(block, g.feeder)
    groups = int(getattr(attn, "num_key_value_groups", 1) or 1)
    width = o.weight.shape[1] // groups  # the value rows: the feeder's trailing rows (fused qkv)
    if o.weight.shape[1] % head_dim or width % head_dim:
        raise InputError(f"rotate: {g.linears[0]}: {o.weight.shape[1]} inputs are not whole heads of {head_dim}")
    H, kind = rotation_matrix(head_dim, config.seed + 1)
    Wv = v.weight.detach().double()
    rows = Wv[-width:].reshape(-1, head_dim, Wv.shape[1])
    Wv[-width:] = torch.einsum("ji,hjk->hik", H, rows).reshape(width, -1)  # Hᵀ per head
    _set(v.weight, Wv)
    if getattr(v, "bias", None) is not None:
        b = v.bias.detach().double()
        b[-width:] = (b[-width:].reshape(-1, head_dim) @ H).reshape(-1)
        _set(v.bias, b)
    Wo = o.weight.detach().double()
    _set(o.weight, (Wo.reshape(Wo.shape[0], -1, head_dim) @ H).reshape(Wo.shape))
    return {"head_dim": head_dim, "head_kind": kind}


def _untie(model: nn.Module, embedding: nn.Module, head: nn.Module, config: RotationConfig) -> bool:
    if head.weight is not embedding.weight and head.weight.data_ptr() != embedding.weight.data_ptr():
        return False
    if not config.untie:
        raise InputError("rotate: the model ties its head to its embeddings; the final norm must be "
                         "folded into the head alone, so rotation needs untie: true")
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):  # transformers 5: what save/load treat as tied
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return True


@torch.no_grad()
def rotate_model(model: nn.Module, config: RotationConfig = RotationConfig(),
                 arch: ArchMap | None = None) -> list[dict]:
    """Fold the norms and rotate ``model`` in place (float64 arithmetic, weights cast back to
    their dtype); the float model computes the same function. Returns one report row."""
    start = time.perf_counter()
    arch = arch or arch_for(model)
    blocks = blocks_of(model, arch)
    for block in blocks:
        check_rotatable(block, arch)
    embeddings = [get_module(model, p) for p in arch.embeddings]
    head, final_norm = get_module(model, arch.head), get_module(model, arch.final_norm)
    hidden = embeddings[0].weight.shape[1]
    Q, kind = rotation_matrix(hidden, config.seed)
    untied = _untie(model, embeddings[0], head, config)
    final_kind = next(g.feeder_kind for g in arch.groups if g.feeder_kind in NORM_KINDS)
    heads = None
    for block in blocks:
        for g in arch.groups:
            if g.feeder_kind == "linear":
                for path in g.linears:  # writers of the stream
                    lin = get_module(block, path)
                    _set(lin.weight, Q.T @ lin.weight.detach().double())
                    if getattr(lin, "bias", None) is not None:
                        _set(lin.bias, lin.bias.detach().double() @ Q)
                if config.heads:
                    heads = _rotate_heads(block, g, config) or heads
                continue
            norm = get_module(block, g.feeder)
            gain = _norm_gain(norm, g.feeder_kind)
            for path in g.linears:  # readers
                lin = get_module(block, path)
                _set(lin.weight, (lin.weight.detach().double() * gain) @ Q)
            _reset_norm(norm, g.feeder_kind)
    gain = _norm_gain(final_norm, final_kind)
    _set(head.weight, (head.weight.detach().double() * gain) @ Q)
    _reset_norm(final_norm, final_kind)
    for emb in embeddings:
        _set(emb.weight, emb.weight.detach().double() @ Q)
    row = {"step": "rotate", "hidden": hidden, "kind": kind, "seed": config.seed, "untied_head": untied,
           "seconds": round(time.perf_counter() - start, 3)}
    return [{**row, **(heads or {})}]


@register_model_transform(RotationConfig)
def _rotate_step(step: RotationConfig, model: nn.Module) -> list[dict]:
    return rotate_model(model, step)
