"""Architecture tables against real transformers modules, on tiny random models.

For every table row: its paths resolve, its linears are exactly the linears inside a block, each
group's feeder has the right width, folding a per-channel scale into the feeder leaves the logits
unchanged (what the group promises to the transforms that will use it), and RTN quantization
replaces exactly the table's linears and keeps the logits close to the float model's.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPTNeoXConfig
from transformers.pytorch_utils import Conv1D

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.arch import (
    ARCH_TABLE, ARCH_VARIANTS, ArchMap, LinearGroup, UnsupportedModelError, arch_for, blocks_of,
    get_module,
)
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.modules import QuantLinear
from lowbit.quantize import linear_weight, quantize_model
from lowbit.recipes import Recipe, load_preset

# Every row of the tables: the ten families plus the other rows; each tiny model is named after
# the row it must get.
CASES = tiny_models.ARCHS + sorted(tiny_models.VARIANTS)
# Output projections of attention: they read the value heads, each repeated H / KV times.
ATTN_OUT = ("self_attn.o_proj", "self_attn.out_proj", "attn.c_proj")
NORMS = (nn.LayerNorm,)  # plus every *RMSNorm class, matched by name below


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These matmuls are tiny: a second intra-op thread only adds synchronisation, which on a
    busy 2-core machine makes a forward pass ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ids():
    return tiny_models.input_ids()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, Conv1D))


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORMS) or type(m).__name__.endswith("RMSNorm")


def _heads(model) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the text decoder."""
    cfg = model.config.get_text_config()
    h = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or h
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    return h, kv, hd


def _in_features(module: nn.Module, conv1d: bool) -> int:
    return linear_weight(module, conv1d).shape[1]


def _read_slice(model, group: LinearGroup, linear: str, in_features: int) -> tuple[int, int]:
    """How a linear reads a ``linear`` feeder: (width of the feeder's trailing output slice it
    reads, how many times each channel of that slice is repeated).

    The rule: the linears read the feeder's *trailing* output rows (v in a fused qkv_proj or
    GPT-2's c_attn, up in phi3's gate_up_proj); an attention output projection reads the value
    heads, each repeated num_heads / num_kv_heads times under grouped-query attention, so its
    in-features are H * head_dim while the slice it reads is KV * head_dim.
    """
    if linear in ATTN_OUT:
        h, kv, hd = _heads(model)
        assert in_features == h * hd, f"{linear}: in-features {in_features} != {h} heads x {hd}"
        return kv * hd, h // kv
    return in_features, 1


# ---------------------------------------------------------------- lookup and paths


@pytest.mark.parametrize("arch", CASES)
def test_lookup_picks_the_row_for_the_model_type(arch):
    model = tiny_models.build(arch)
    row = arch_for(model)
    assert row.name == arch
    assert not row.fallback
    assert model.config.model_type in row.model_types


def test_every_family_of_the_issue_has_a_row():
    families = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3",
                "phi3", "opt", "gpt2"}
    assert families <= set(ARCH_TABLE)
    assert set(tiny_models.ARCHS) == {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                      "gemma3", "phi3", "opt", "gpt2"}
    assert [m.name for m in ARCH_VARIANTS["opt"]] == ["opt-post-ln"]
    # Every row has a tiny model here, so every row is checked by the tests below.
    every_row = {m.name for m in ARCH_TABLE.values()}
    every_row |= {m.name for ms in ARCH_VARIANTS.values() for m in ms}
    assert every_row == set(CASES)


@pytest.mark.parametrize("arch", CASES)
def test_every_path_resolves(arch):
    model = tiny_models.build(arch)
    row = arch_for(model)
    blocks = blocks_of(model, row)
    assert len(blocks) == 2
    for path in row.embeddings:
        assert isinstance(get_module(model, path), nn.Embedding), path
    if row.final_norm:
        assert _is_norm(get_module(model, row.final_norm)), row.final_norm
    else:  # a row without a final norm: the model really has none
        assert get_module(model, "model.decoder.final_layer_norm") is None
    assert isinstance(get_module(model, row.head), nn.Linear)
    for block in blocks:
        for g in row.groups:
            for path in g.linears:
                assert _is_linear(get_module(block, path)), path
            if g.feeder:
                feeder = get_module(block, g.feeder)
                assert feeder is not None, g.feeder
                if g.feeder_kind == "linear":
                    assert _is_linear(feeder), g.feeder
                elif g.feeder_kind != "none":
                    assert _is_norm(feeder), g.feeder


@pytest.mark.parametrize("arch", CASES)
def test_table_linears_are_every_linear_in_a_block(arch):
    """No linear inside a block is silently left unquantized, and none is listed twice."""
    model = tiny_models.build(arch)
    row = arch_for(model)
    listed = [p for g in row.groups for p in g.linears]
    assert len(listed) == len(set(listed)) == len(row.linears)
    for block in blocks_of(model, row):
        found = {n for n, m in block.named_modules() if _is_linear(m)}
        assert found == set(row.linears)
        assert row.conv1d == any(isinstance(m, Conv1D) for m in block.modules())


@pytest.mark.parametrize("arch", CASES)
def test_feeder_width_matches_each_linears_input(arch):
    model = tiny_models.build(arch)
    row = arch_for(model)
    block = blocks_of(model, row)[0]
    checked = 0
    for g in row.groups:
        if g.feeder_kind == "none":
            continue
        feeder = get_module(block, g.feeder)
        for path in g.linears:
            in_features = _in_features(get_module(block, path), row.conv1d)
            if g.feeder_kind == "linear":
                out_features = linear_weight(feeder, row.conv1d).shape[0]
                width, repeat = _read_slice(model, g, path, in_features)
                # The slice is the whole output, or the trailing part of a fused output.
                assert width <= out_features, (g.feeder, path)
                assert width * repeat == in_features, (g.feeder, path)
            else:
                assert feeder.weight.numel() == in_features, (g.feeder, path)
            checked += 1
    assert checked >= 2


# ---------------------------------------------------------------- folding a scale into the feeder


@torch.no_grad()
def _fold(model, row: ArchMap, group: LinearGroup, block_index: int, gen: torch.Generator) -> None:
    """Divide the feeder's output channels by random positive scales s and multiply the
    linears' input columns by s. Output-preserving exactly when the group row is right."""
    block = blocks_of(model, row)[block_index]
    first = get_module(block, group.linears[0])
    in_features = _in_features(first, row.conv1d)
    width, repeat = (_read_slice(model, group, group.linears[0], in_features)
                     if group.feeder_kind == "linear" else (in_features, 1))
    s = torch.empty(width).uniform_(0.5, 2.0, generator=gen)
    if repeat > 1:  # GQA: a value head's scale is shared by the query heads that read it
        h, kv, hd = _heads(model)
        s_in = s.view(kv, 1, hd).expand(kv, repeat, hd).reshape(-1)
    else:
        s_in = s
    for path in group.linears:
        linear_weight(get_module(block, path), row.conv1d).mul_(s_in)
    feeder = get_module(block, group.feeder)
    if group.feeder_kind == "linear":
        linear_weight(feeder, row.conv1d)[-width:].div_(s.unsqueeze(1))
        if feeder.bias is not None:
            feeder.bias[-width:].div_(s)
    elif group.feeder_kind == "rmsnorm_offset":
        feeder.weight.copy_((1 + feeder.weight) / s - 1)
    else:  # rmsnorm, layernorm
        feeder.weight.div_(s)
        if getattr(feeder, "bias", None) is not None:
            feeder.bias.div_(s)


FOLD_TOL = 1e-5


@pytest.mark.parametrize("arch", CASES)
def test_folding_a_scale_into_each_feeder_keeps_the_logits(arch, ids):
    model = tiny_models.build(arch)
    row = arch_for(model)
    ref = _logits(model, ids)
    gen = torch.Generator().manual_seed(0)
    folded = 0
    for g in row.groups:
        if g.feeder_kind == "none":
            continue
        _fold(model, row, g, block_index=folded % 2, gen=gen)
        folded += 1
    assert folded >= 2
    assert _rel_err(_logits(model, ids), ref) < FOLD_TOL


@pytest.mark.parametrize("arch, wrong", [
    # gemma2's MLP does not read post_attention_layernorm (that one normalises attention output)
    ("gemma2", LinearGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "rmsnorm_offset")),
    # gemma's norms are (1 + w): treating them as plain w is wrong
    ("gemma", LinearGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "rmsnorm")),
    # GELU between c_fc and c_proj: why the gpt2 row says "none"
    ("gpt2", LinearGroup("mlp.c_fc", ("mlp.c_proj",), "linear")),
    # post-LN OPT: the norm's output is also the residual stream: why opt-post-ln says "none"
    ("opt-post-ln", LinearGroup("self_attn_layer_norm", ("fc1",), "layernorm")),
])
def test_folding_detects_a_wrong_row(arch, wrong, ids):
    """The check above can fail: a mis-wired group changes the logits by far more than FOLD_TOL."""
    model = tiny_models.build(arch)
    row = arch_for(model)
    ref = _logits(model, ids)
    _fold(model, row, wrong, block_index=0, gen=torch.Generator().manual_seed(0))
    assert _rel_err(_logits(model, ids), ref) > 100 * FOLD_TOL


# ---------------------------------------------------------------- quantization


def _recipe(bits: int, group_size: int, sym: bool, clip: bool = False) -> Recipe:
    """The w4a16-rtn preset with another format; its clipping search only where asked (it is
    the slow part and changes little on these weights)."""
    base = load_preset("w4a16-rtn")
    steps = base.steps if clip else (RTNConfig(clip=None),)
    return replace(base, format=FormatSpec(bits=bits, group_size=group_size, sym=sym), steps=steps,
                   name=f"w{bits}-g{group_size}")


def _float_params(model, row: ArchMap) -> dict[str, torch.Tensor]:
    """Weights that must stay float: embeddings, every norm, the head."""
    keep = {p: get_module(model, p) for p in (*row.embeddings, row.head)}
    keep |= {n: m for n, m in model.named_modules() if _is_norm(m)}
    return {n: m.weight.detach().clone() for n, m in keep.items()}


# Relative L2 error of the logits against the float model. Measured on these tiny models
# (float32, init std 0.1, two blocks amplify a weight error about 2.5x): W8 sym per-channel
# 0.008-0.018, W4 asym g32 0.11-0.25. A transposed, mis-scaled or
# wrongly packed layer gives errors near 1; 4-bit-sized errors break the W8 bound.
W8_BOUND = 0.03
W4_BOUND = 0.35


@pytest.mark.parametrize("arch", CASES)
def test_w4_g32_replaces_exactly_the_table_linears(arch, ids):
    model = tiny_models.build(arch)
    row = arch_for(model)
    ref = _logits(model, ids)
    kept = _float_params(model, row)
    report = quantize_model(model, _recipe(4, 32, sym=False), progress=False)
    expected = {f"{row.blocks}.{i}.{p}" for i in range(2) for p in row.linears}
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == expected
    assert {r["name"] for r in report.layers} == expected
    assert not any(_is_linear(m) for n, m in model.named_modules() if n.startswith(row.blocks))
    for name, weight in kept.items():
        module = get_module(model, name)
        assert not isinstance(module, QuantLinear), name
        assert torch.equal(module.weight, weight), name
    assert _rel_err(_logits(model, ids), ref) < W4_BOUND


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_w8_per_channel_logits_are_very_close(arch, ids):
    model = tiny_models.build(arch)
    ref = _logits(model, ids)
    quantize_model(model, _recipe(8, -1, sym=True), progress=False)
    assert _rel_err(_logits(model, ids), ref) < W8_BOUND


def test_gpt2_conv1d_is_transposed_into_quantlinear(ids):
    """Conv1D stores (in, out); the QuantLinear must hold (out, in). c_proj is square (64 x 64),
    so a missing transpose would not fail on shapes: compare the weights themselves."""
    model = tiny_models.build("gpt2")
    block = model.transformer.h[0]
    floats = {p: block.get_submodule(p).weight.detach().clone() for p in ("attn.c_proj", "mlp.c_fc")}
    quantize_model(model, _recipe(8, -1, sym=True), progress=False)
    for path, w in floats.items():
        q = block.get_submodule(path)
        assert isinstance(q, QuantLinear)
        deq = q.dequantized_weight(torch.float32)
        assert deq.shape == w.t().shape
        # int8 sym per-channel: each weight within half a step (amax / 127 / 2) of the float one
        half_step = w.t().abs().amax(dim=1, keepdim=True) / 127 / 2
        assert ((deq - w.t()).abs() <= half_step * 1.01 + 1e-7).all(), path
    square = floats["attn.c_proj"]
    deq = block.attn.c_proj.dequantized_weight(torch.float32)
    assert (deq - square).abs().max() > 10 * (deq - square.t()).abs().max()


# ---------------------------------------------------------------- unknown architectures


def _neox():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=tiny_models.VOCAB, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                        initializer_range=tiny_models.INIT)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_unknown_architecture_falls_back_to_every_linear_with_a_warning(ids):
    model = _neox()
    assert model.config.model_type not in ARCH_TABLE
    with pytest.warns(UserWarning, match="'gpt_neox' has no lowbit table"):
        row = arch_for(model)
    assert row.fallback and row.blocks == "gpt_neox.layers"
    assert set(row.linears) == {"attention.query_key_value", "attention.dense",
                                "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
    assert all(g.feeder_kind == "none" for g in row.groups)
    ref = _logits(model, ids)
    with pytest.warns(UserWarning, match="no lowbit table"):
        quantize_model(model, _recipe(8, -1, sym=True), progress=False)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == {f"gpt_neox.layers.{i}.{p}" for i in range(2) for p in row.linears}
    assert isinstance(model.get_output_embeddings(), nn.Linear)  # the head stays float
    assert _rel_err(_logits(model, ids), ref) < W8_BOUND


def test_known_type_in_an_unknown_wrapper_falls_back_with_a_warning():
    """A llama base model (AutoModel, no head) keeps its blocks at ``layers``, not where the
    llama row expects them: warn and fall back rather than fail or quantize nothing."""
    base = tiny_models.build("llama").model
    assert base.config.model_type == "llama"
    with pytest.warns(UserWarning, match="no decoder blocks at 'model.layers'"):
        row = arch_for(base)
    assert row.fallback and row.blocks == "layers"
    assert set(row.linears) == set(ARCH_TABLE["llama"].linears)


class _Conv1DBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(64, 32)  # Conv1D(out, in)

    def forward(self, x):
        return x + self.c_fc(x)[..., :32]


class _Conv1DModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList([_Conv1DBlock(), _Conv1DBlock()])


def test_fallback_takes_conv1d_blocks_with_their_orientation():
    model = _Conv1DModel()
    with pytest.warns(UserWarning, match="every Conv1D"):
        row = arch_for(model)
    assert row.conv1d and row.linears == ("c_fc",)
    w = model.transformer.h[1].c_fc.weight.detach().clone()
    with pytest.warns(UserWarning):
        quantize_model(model, _recipe(8, -1, sym=True), progress=False)
    deq = model.transformer.h[1].c_fc.dequantized_weight(torch.float32)
    assert deq.shape == (64, 32)
    assert (deq - w.t()).abs().max() < w.abs().max() / 127


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(32, 32)), nn.Module()],
                         ids=["sequential", "empty"])
def test_model_without_blocks_is_a_clear_error(model):
    with pytest.raises(UnsupportedModelError, match=r"architecture '(Sequential|Module)' is not supported"):
        arch_for(model)
    assert issubclass(UnsupportedModelError, InputError)
    with pytest.raises(UnsupportedModelError):
        quantize_model(model, _recipe(8, -1, sym=True), progress=False)


def test_blocks_without_linears_are_a_clear_error():
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([nn.LayerNorm(8)])
    with pytest.raises(UnsupportedModelError, match="no decoder blocks with linear layers"):
        arch_for(model)


def test_group_rows_are_validated():
    with pytest.raises(ValueError, match="feeder kind"):
        LinearGroup("input_layernorm", ("q",), "rms")
    with pytest.raises(ValueError, match="without a feeder"):
        LinearGroup("", ("q",), "rmsnorm")
