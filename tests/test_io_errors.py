"""Bad checkpoint input and output: one-line InputErrors, never a partial output directory."""
from __future__ import annotations

import json
import os

import pytest
import torch

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import check_output_dir, inspect_checkpoint, is_quantized_checkpoint, load, save
from lowbit.io.atomic import atomic_directory
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe


@pytest.fixture(scope="module")
def model():
    m = tiny_models.build("llama")
    quantize_model(m, Recipe(format=FormatSpec(bits=4, sym=False, group_size=32), steps=(RTNConfig(clip=None),)),
                   progress=False)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return save(model, None, tmp_path_factory.mktemp("saved") / "ckpt")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


# ---- load ------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(InputError) as e:
        load(tmp_path / "nope")
    assert "does not exist" in one_line(e) and "nope" in str(e.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(InputError, match="no config.json") as e:
        load(tmp_path)
    one_line(e)


def test_float_checkpoint_is_not_a_quantized_one(tmp_path):
    tiny_models.build("llama").save_pretrained(tmp_path)
    with pytest.raises(InputError, match="not a quantized checkpoint"):
        load(tmp_path)


def test_unknown_quant_method(tmp_path, saved):
    config = json.loads((saved / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="'awq'"):
        load(tmp_path)


def copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors(saved, tmp_path, keep):
    bad = copy_checkpoint(saved, tmp_path / "bad")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    for verb in (load, inspect_checkpoint):
        with pytest.raises(InputError, match="truncated") as e:
            verb(bad)
        assert "model.safetensors" in one_line(e)


def test_corrupt_safetensors_header(saved, tmp_path):
    bad = copy_checkpoint(saved, tmp_path / "bad")
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff\xfe garb"
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt safetensors header") as e:
        load(bad)
    one_line(e)


def test_missing_weights_file(saved, tmp_path):
    bad = copy_checkpoint(saved, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no model.safetensors"):
        load(bad)


def test_is_quantized_checkpoint(saved, tmp_path):
    assert is_quantized_checkpoint(saved)
    tiny_models.build("llama").save_pretrained(tmp_path / "float")
    for other in (tmp_path / "float", tmp_path / "missing", "HuggingFaceTB/SmolLM2-135M", tmp_path):
        assert not is_quantized_checkpoint(other)


# ---- save ------------------------------------------------------------------------------------

def test_check_output_dir_before_any_work(saved, tmp_path):
    assert check_output_dir(tmp_path / "new") == (tmp_path / "new").absolute()
    assert check_output_dir(saved, overwrite=True) == saved
    with pytest.raises(InputError, match="already exists"):
        check_output_dir(saved)
    assert not (tmp_path / "new").exists()


def test_module_state_compressed_tensors_cannot_hold_goes_native(tmp_path):
    m = tiny_models.build("llama")
    quantize_model(m, Recipe(format=FormatSpec(bits=4, sym=True, group_size=32), steps=(RTNConfig(clip=None),)),
                   progress=False)
    m.model.layers[0].mlp.up_proj.register_buffer("weight_perm", torch.arange(64))
    with pytest.raises(InputError, match="weight_perm"):
        save(m, None, tmp_path / "ct", format="compressed-tensors")
    assert inspect_checkpoint(save(m, None, tmp_path / "auto"))["format"] == "native"


def test_existing_output_refused_then_overwritten(model, saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists") as e:
        save(model, None, out)
    one_line(e)
    assert (out / "old.txt").exists()
    save(model, None, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").exists()
    assert siblings(out) == ["out"]


def test_unwritable_output_directory(model, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InputError, match="not writable") as e:
        save(model, None, blocker / "sub" / "out")
    assert str(blocker) in one_line(e)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_parent(model, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            save(model, None, parent / "out")
    finally:
        parent.chmod(0o700)


def test_failed_save_leaves_nothing(model, tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            (path / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save(model, BrokenTokenizer(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_output(model, saved, tmp_path):
    out = copy_checkpoint(saved, tmp_path / "out")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == before
    assert siblings(out) == ["out"]


def test_unknown_format_and_unquantized_model(model, tmp_path):
    with pytest.raises(InputError, match="unknown checkpoint format"):
        save(model, None, tmp_path / "a", format="exl2")
    with pytest.raises(InputError, match="no lowbit quantized layers"):
        save(tiny_models.build("llama"), None, tmp_path / "b")
    with pytest.raises(InputError, match="relative path"):
        save(model, None, tmp_path / "c", extra_files={"../escape.txt": "x"})
    assert list(tmp_path.iterdir()) == []


# ---- inspect ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["compressed-tensors", "native"])
def test_inspect_reports_layers_and_bits(model, tmp_path, fmt):
    out = save(model, None, tmp_path / fmt, format=fmt)
    info = inspect_checkpoint(out)
    assert info["format"] == fmt and info["model_type"] == "llama"
    assert info["quantized_layers"] == 14 and len(info["layers"]) == 14
    # Per 32 weights: 4-bit codes, a float32 scale and a zero, which compressed-tensors packs to
    # 4 bits and the native layout keeps as QuantLinear's int32.
    bpw = 4 + (32 + 4) / 32 if fmt == "compressed-tensors" else 4 + (32 + 32) / 32
    row = next(r for r in info["layers"] if r["name"] == "model.layers.1.mlp.down_proj")
    assert row == {"name": "model.layers.1.mlp.down_proj", "shape": [64, 128], "bits": 4, "group_size": 32,
                   "sym": False, "format": "int4 asym g32", "bits_per_weight": bpw}
    assert info["bits_per_weight"] == bpw
    total_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert info["size_bytes"] == total_bytes
    assert bpw < info["model_bits_per_weight"] < 32  # embeddings and lm_head stay float32
    assert info["recipe"]["format"]["bits"] == 4
    assert info["quantized_weights"] == sum(r["shape"][0] * r["shape"][1] for r in info["layers"])


def test_another_tools_recipe_with_python_tags_is_read_as_plain_values(tmp_path):
    # llm-compressor writes its enums as python/object tags; reading them must neither fail nor
    # build Python objects (a safe loader with every unknown tag read as the plain value under it).
    from lowbit.io.checkpoint import _recipe_yaml
    from lowbit.io.files import CheckpointError

    (tmp_path / "recipe.yaml").write_text(
        "stage:\n  GPTQModifier:\n    actorder: !!python/object/apply:os.system [\n      static]\n"
        "    dampening_frac: 0.01\n    other: !custom {a: 1}\n")
    data = _recipe_yaml(tmp_path)
    assert data == {"stage": {"GPTQModifier": {"actorder": "static", "dampening_frac": 0.01, "other": {"a": 1}}}}
    (tmp_path / "recipe.yaml").write_text("a: [unclosed\n")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        _recipe_yaml(tmp_path)
