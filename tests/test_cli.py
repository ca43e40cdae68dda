"""The command line on a tiny local model: the happy path and every bad input the issue names.

Each bad input must give exit code 2, one line on stderr starting with "error:", no traceback,
and no output directory.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from lowbit.cli import main
from tiny_checkpoint import write_model_dir

FAST = ["--seqlen", "64", "--eval", "builtin:pydoc", "--eval-windows", "2", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def quantized(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "w4"
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--group-size", "32", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    return out


def run_bad(args, out: Path | None = None):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and r.stderr.rstrip().splitlines()[-1] == errors[0], r.stderr
    assert "Traceback" not in r.output + r.stderr
    if out is not None:
        assert not out.exists()
    return errors[0]


def test_quantize_writes_checkpoint_and_report(quantized):
    report = json.loads((quantized / "report.json").read_text())
    rows = {r["name"]: r for r in report["evaluation"]["rows"]}
    # int4 codes + one float32 scale and a 4-bit zero per group of 32
    assert rows["quantized"]["bits_per_weight"] == pytest.approx(4 + (32 + 4) / 32)
    assert 0 < rows["quantized"]["top1"] <= 1 and rows["quantized"]["kl"] >= 0
    assert (quantized / "report.md").read_text().count("|") > 10
    assert (quantized / "recipe.yaml").exists()


def test_inspect_and_generate(quantized):
    r = CliRunner().invoke(main, ["inspect", str(quantized)])
    assert r.exit_code == 0, r.output
    assert "q_proj" in r.output and "compressed-tensors" in r.output
    r = CliRunner().invoke(main, ["generate", str(quantized), "Hello", "--max-new-tokens", "5", "--no-chat"])
    assert r.exit_code == 0, r.output


def test_eval_command(quantized, model_dir):
    r = CliRunner().invoke(main, ["eval", str(quantized), "--text", "builtin:pydoc", "--seqlen", "64",
                                  "--windows", "2", "--reference", str(model_dir), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "ppl" in r.output.lower()


def test_refuses_existing_output_then_overwrites(quantized, model_dir):
    before = (quantized / "report.json").stat().st_mtime
    msg = run_bad(["quantize", str(model_dir), "--group-size", "32", "--out", str(quantized), *FAST])
    assert "--overwrite" in msg
    assert (quantized / "report.json").stat().st_mtime == before
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--group-size", "32", "--bits", "8",
                                  "--out", str(quantized), "--overwrite", "--eval", "none", "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((quantized / "config.json").read_text())
    assert "8" in json.dumps(cfg["quantization_config"])


def test_missing_model(tmp_path):
    out = tmp_path / "out"
    msg = run_bad(["quantize", str(tmp_path / "nope"), "--out", str(out), *FAST], out)
    assert "nope" in msg


@pytest.mark.parametrize("bits", ["5", "1", "16"])
def test_unsupported_bits(model_dir, tmp_path, bits):
    out = tmp_path / "out"
    assert "bits" in run_bad(["quantize", str(model_dir), "--bits", bits, "--out", str(out), *FAST], out)


def test_group_size_that_does_not_fit(model_dir, tmp_path):
    out = tmp_path / "out"
    msg = run_bad(["quantize", str(model_dir), "--group-size", "48", "--out", str(out), *FAST], out)
    assert "48" in msg and "proj" in msg


def test_unwritable_output(model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run_bad(["quantize", str(model_dir), "--group-size", "32", "--out", str(blocker / "out"), *FAST])


def test_nan_weight_is_named(model_dir, tmp_path):
    bad = write_model_dir(tmp_path / "nan-model")
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.mlp.down_proj.weight"))
    weights[name][3, 5] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    msg = run_bad(["quantize", str(bad), "--group-size", "32", "--out", str(out), *FAST], out)
    assert "layers.1.mlp.down_proj" in msg and "NaN" in msg


def test_corrupt_safetensors(model_dir, tmp_path):
    bad = write_model_dir(tmp_path / "corrupt")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = tmp_path / "out"
    msg = run_bad(["quantize", str(bad), "--group-size", "32", "--out", str(out), *FAST], out)
    assert "safetensors" in msg


def test_corrupt_quantized_checkpoint(quantized, tmp_path):
    import shutil
    bad = tmp_path / "bad-ckpt"
    shutil.copytree(quantized, bad)
    f = next(bad.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:100])
    run_bad(["inspect", str(bad)])
    run_bad(["eval", str(bad), "--text", "builtin:pydoc", "--seqlen", "64", "--windows", "1", "--quiet"])


def test_too_short_eval_text(model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    out = tmp_path / "out"
    msg = run_bad(["quantize", str(model_dir), "--group-size", "32", "--out", str(out), "--seqlen", "64",
                   "--eval", str(short), "--quiet"], out)
    assert "token" in msg


def test_empty_text_file(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    run_bad(["quantize", str(model_dir), "--group-size", "32", "--out", str(out), "--eval", str(empty), "--quiet"], out)


def test_dry_run_writes_nothing(model_dir, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert not out.exists()


def test_calibration_memory_options_reach_the_plan(model_dir, tmp_path):
    out = tmp_path / "out"
    base = ["quantize", str(model_dir), "--method", "gptq", "--group-size", "32", "--n-samples", "8",
            "--seqlen", "32", "--calib-batch", "2", "--out", str(out), "--dry-run"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    assert "batches of 2" in r.output and "replayed outputs" not in r.output  # the fast walk replays nothing
    r = CliRunner().invoke(main, base + ["--true-sequential"])
    assert r.exit_code == 0, r.output
    assert "replayed outputs" in r.output
    r = CliRunner().invoke(main, base + ["--true-sequential", "--replay-memory", "0"])
    assert r.exit_code == 0, r.output
    assert "replayed outputs" not in r.output
    no_batch = [a for i, a in enumerate(base) if a != "--calib-batch" and base[i - 1] != "--calib-batch"]
    r = CliRunner().invoke(main, no_batch)
    assert r.exit_code == 0 and "batches of 4" in r.output, r.output  # the CPU default
    r = CliRunner().invoke(main, base + ["--calib-batch", "0"])
    assert r.exit_code != 0 and "--calib-batch" in r.output and not out.exists()


def test_console_script_help():
    exe = Path(sys.executable).parent / "lowbit"
    r = subprocess.run([str(exe), "quantize", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--group-size" in r.stdout
