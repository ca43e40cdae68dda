"""`lowbit compare`: several models of different formats on the same windows, one table whose
numbers are the evaluator's own."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lowbit.cli import main
from lowbit.data.windows import eval_windows
from lowbit.eval import evaluate
from lowbit.io import load
from lowbit.sources import load_model
from test_io_gguf import bpe_model

TEXT = ("The committee met on Tuesday to discuss the budget. Members agreed that the new library "
        "would open in the spring, and that the roads near the river needed repair before winter. ") * 12


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    model, tokenizer = bpe_model("llama", seed=1)
    model.save_pretrained(root / "fp")
    tokenizer.save_pretrained(root / "fp")
    (root / "text.txt").write_text(TEXT)
    r = run("quantize", root / "fp", "--bits", 4, "--group-size", 32, "--sym", "--no-clip", "--eval", "none",
            "--out", root / "q4", "--quiet")
    assert r.exit_code == 0, r.output
    assert run("export", root / "q4", "--format", "gguf", "--out", root / "gguf").exit_code == 0
    return root


def test_compare_prints_one_table_with_the_evaluators_numbers(models):
    root = models
    r = run("compare", root / "fp", root / "q4", root / "gguf" / "model.gguf", "--text", root / "text.txt",
            "--seqlen", 32, "--windows", 3, "--out", root / "report", "--quiet")
    assert r.exit_code == 0, r.output
    assert "3 windows of 32 tokens, 93 predicted tokens; KL and top-1 against " in r.output
    result = json.loads((root / "report" / "compare.json").read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == [str(root / "fp"), str(root / "q4"), str(root / "gguf" / "model.gguf")]
    assert rows[str(root / "fp")]["kl"] is None and rows[str(root / "fp")]["bits_per_weight"] == 32.0
    assert rows[str(root / "q4")]["bits_per_weight"] == 5.0 and rows[str(root / "gguf" / "model.gguf")]["bits_per_weight"] == 4.5
    fp, tokenizer = load_model(str(root / "fp"))
    q4, _ = load(root / "q4")
    windows = eval_windows(tokenizer, TEXT, 32, max_windows=3)
    want = evaluate(q4, windows, reference=fp, progress=False)
    got = rows[str(root / "q4")]
    assert got["ppl"] == pytest.approx(want.ppl, rel=1e-12) and got["kl"] == pytest.approx(want.kl, rel=1e-9)
    assert rows[str(root / "fp")]["ppl"] == pytest.approx(want.ref_ppl, rel=1e-12)
    assert got["kl"] > 0 and rows[str(root / "gguf" / "model.gguf")]["kl"] > 0
    assert (root / "report" / "compare.md").read_text().count("\n") == 5  # header, rule, three rows


def test_reference_goes_first_and_different_tokenizers_are_refused(models, tmp_path):
    root = models
    r = run("compare", root / "q4", "--reference", root / "fp", "--text", root / "text.txt", "--seqlen", 32,
            "--windows", 1, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"against {root / 'fp'}" in r.output
    from tiny_checkpoint import write_model_dir
    write_model_dir(tmp_path / "char", "llama")  # character-level tokenizer
    r = run("compare", root / "fp", tmp_path / "char", "--text", root / "text.txt", "--seqlen", 32, "--quiet")
    assert r.exit_code == 2 and "tokenizes the text differently" in r.output
