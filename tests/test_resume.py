"""Checkpoint-and-resume of the block-by-block pipeline: a killed run restarted with the same call
finishes with a checkpoint byte-identical to an uninterrupted run."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import tiny_models
from tiny_checkpoint import char_tokenizer
from lowbit import FormatSpec, Recipe, quantize_model
from lowbit.algorithms.gptq_step import GPTQConfig
from lowbit.algorithms.online_hadamard import OnlineHadamardConfig
from lowbit.formats.activations import ActivationSpec
from lowbit.pipeline import resume as resume_mod
from lowbit.pipeline.resume import ResumeDir, remove_resume_dir

W4 = FormatSpec(bits=4, sym=False, group_size=32)
N_BLOCKS = 4

# `lowbit quantize ...` as a console script would run it. With SLOW set the pipeline pauses after
# every block checkpoint, so that a kill lands mid-way for certain (the kill itself may land
# anywhere: every checkpoint file is atomic). One thread: the two runs share two cores.
LOWBIT = """
import os, sys, time
import torch
torch.set_num_threads(1)
from lowbit.pipeline import resume
if os.environ.get("SLOW"):
    original = resume.ResumeDir.save_block
    def slow_save(self, *a, **k):
        original(self, *a, **k)
        time.sleep(0.5)
    resume.ResumeDir.save_block = slow_save
from lowbit.cli import main
main(args=sys.argv[1:], prog_name="lowbit")
"""


def _model_dir(path: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(**{**tiny_models._LLAMA_LIKE, "num_hidden_layers": N_BLOCKS})
    AutoModelForCausalLM.from_config(config).float().eval().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def _quantize(script: Path, model_dir: Path, out: Path, slow: bool) -> subprocess.Popen:
    cmd = [sys.executable, str(script), "quantize", str(model_dir), "--method", "gptq", "--group-size", "32",
           "--n-samples", "12", "--seqlen", "32", "--eval", "none", "--quiet", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLOW": "1" if slow else ""}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _safetensors_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def test_cli_run_killed_mid_way_resumes_to_a_byte_identical_checkpoint(tmp_path):
    script = tmp_path / "lowbit_cli.py"
    script.write_text(LOWBIT)
    model_dir = _model_dir(tmp_path / "tiny-llama")
    # The uninterrupted reference runs beside the one that gets killed.
    reference = _quantize(script, model_dir, tmp_path / "ref", slow=False)
    victim = _quantize(script, model_dir, tmp_path / "out", slow=True)
    state = tmp_path / "out.partial" / "state.json"  # the CLI's default resume directory
    deadline = time.monotonic() + 90
    while not state.exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no block checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    finished = json.loads(state.read_text())["finished"]
    assert 1 <= finished < N_BLOCKS
    assert not (tmp_path / "out").exists()

    # The same command again: it loads the finished blocks and calibrates only the rest.
    restarted = _quantize(script, model_dir, tmp_path / "out", slow=False)
    out_text, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    assert f"{finished} of {N_BLOCKS} blocks done" in err
    ref_text, ref_err = reference.communicate(timeout=120)
    assert reference.returncode == 0, ref_err
    assert "resuming" not in ref_err
    assert f"quantized {7 * N_BLOCKS} layers" in out_text and f"quantized {7 * N_BLOCKS} layers" in ref_text
    ours, theirs = _safetensors_bytes(tmp_path / "out"), _safetensors_bytes(tmp_path / "ref")
    assert ours and ours.keys() == theirs.keys()
    assert all(ours[k] == theirs[k] for k in ours)
    # The resume directory goes once the result is saved.
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "ref.partial").exists()


def _tiny(blocks: int = 3):
    torch.manual_seed(0)
    config = LlamaConfig(**{**tiny_models._LLAMA_LIKE, "num_hidden_layers": blocks})
    return AutoModelForCausalLM.from_config(config).float().eval()


def _quantized_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, blocks_done: int):
    original = ResumeDir.save_block

    def save_then_crash(self, index, *a, **k):
        original(self, index, *a, **k)
        if index + 1 == blocks_done:
            raise _Crash
    monkeypatch.setattr(resume_mod.ResumeDir, "save_block", save_then_crash)


# W8A8 layers (static: a NaN input scale until the final calibration pass) are rebuilt as their
# own module types, not as weight-only ones.
RECIPES = {
    "w4-gptq": Recipe(format=W4, steps=(GPTQConfig(clip=None),)),
    "w8a8-static-gptq": Recipe(format=FormatSpec(bits=8, sym=True, group_size=-1), steps=(GPTQConfig(clip=None),),
                               activations=ActivationSpec(kind="int8", dynamic=False)),
    "fp8-gptq": Recipe(format=FormatSpec(kind="fp8", bits=8, group_size=-1), steps=(GPTQConfig(clip=None),),
                       activations=ActivationSpec(kind="fp8")),
    # down_proj rotates its inputs online: the signs ride in the block's state, the hook comes back
    "hadamard-w4-gptq": Recipe(format=W4, steps=(OnlineHadamardConfig(), GPTQConfig(clip=None))),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_resume_in_process_restores_blocks_rows_and_continues(tmp_path, monkeypatch, name):
    base = _tiny()
    calib = tiny_models.input_ids(batch=6, seqlen=32, seed=4)
    recipe = RECIPES[name]
    ref_model = copy.deepcopy(base)
    ref = quantize_model(ref_model, recipe, calib=calib, progress=False, batch_size=3)

    rdir = tmp_path / "partial"
    crashed = copy.deepcopy(base)
    _crash_after(monkeypatch, 2)
    with pytest.raises(_Crash):
        quantize_model(crashed, recipe, calib=calib, progress=False, batch_size=3, resume_dir=rdir)
    monkeypatch.undo()
    assert json.loads((rdir / "state.json").read_text())["finished"] == 2
    assert sorted(p.name for p in rdir.iterdir()) == [
        "block-0000.safetensors", "block-0001.safetensors", "hidden-0002.safetensors", "state.json"]

    # A fresh float model, as a restarted process would load it.
    rounded = []
    original = resume_mod.ResumeDir.save_block
    monkeypatch.setattr(resume_mod.ResumeDir, "save_block",
                        lambda self, i, *a, **k: (rounded.append(i), original(self, i, *a, **k)))
    resumed_model = copy.deepcopy(base)
    resumed = quantize_model(resumed_model, recipe, calib=calib, progress=False, batch_size=3, resume_dir=rdir)
    assert rounded == [2]  # only the unfinished block was calibrated again
    want, got = _quantized_state(ref_model), _quantized_state(resumed_model)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) and want[k].dtype == got[k].dtype for k in want)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed.layers) == strip(ref.layers)
    with torch.no_grad():
        assert torch.equal(resumed_model(calib).logits, ref_model(calib).logits)
    remove_resume_dir(rdir)
    assert not rdir.exists()


@pytest.mark.parametrize("change", ["recipe", "calib", "batch_size", "model"])
def test_a_different_call_never_resumes_from_another_runs_state(tmp_path, monkeypatch, change):
    base = _tiny(blocks=2)
    calib = tiny_models.input_ids(batch=6, seqlen=32, seed=4)
    recipe = Recipe(format=W4, steps=(GPTQConfig(clip=None),))
    rdir = tmp_path / "partial"
    _crash_after(monkeypatch, 1)
    with pytest.raises(_Crash):
        quantize_model(copy.deepcopy(base), recipe, calib=calib, progress=False, batch_size=3, resume_dir=rdir)
    monkeypatch.undo()

    model, kwargs = copy.deepcopy(base), dict(calib=calib, batch_size=3)
    if change == "recipe":
        recipe = Recipe(format=FormatSpec(bits=3, sym=False, group_size=32), steps=(GPTQConfig(clip=None),))
    elif change == "calib":
        kwargs["calib"] = tiny_models.input_ids(batch=6, seqlen=32, seed=5)
    elif change == "batch_size":
        kwargs["batch_size"] = 2
    else:
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    rounded = []
    original = resume_mod.ResumeDir.save_block
    monkeypatch.setattr(resume_mod.ResumeDir, "save_block",
                        lambda self, i, *a, **k: (rounded.append(i), original(self, i, *a, **k)))
    quantize_model(model, recipe, progress=False, resume_dir=rdir, **kwargs)
    assert rounded == [0, 1]  # started from scratch
    # and what it left is its own state, which the same call would resume from
    data = json.loads((rdir / "state.json").read_text())
    assert data["finished"] == 2 and len(data["rows"]) == 14


def test_unreadable_state_file_starts_over(tmp_path):
    rdir = tmp_path / "partial"
    rdir.mkdir()
    (rdir / "state.json").write_text("{not json")
    (rdir / "hidden-0003.safetensors").write_bytes(b"junk")
    r = ResumeDir(rdir, "abc")
    assert r.load().finished == 0
    assert not rdir.exists()  # only resume files were there, so the directory went with them
