"""bench/decode_check.py's smoke mode: on the CPU both runs use the reference kernel."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_dry_run_compares_every_preset_at_batch_1_and_2(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import decode_check
    finally:
        sys.path.remove(str(BENCH))
    assert decode_check.main(["--device", "cpu", "--dry", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "decode_check.json").read_text())
    rows = doc["rows"]
    assert {(r["preset"], r["batch"]) for r in rows} == {
        (p, b) for p in decode_check.PRESETS for b in (1, 2)}
    for r in rows:  # the same kernel twice: identical logits, finite perplexity
        assert r["steps"] == 16 and r["max_step_logits_rel_diff"] == 0.0
        assert r["top1_agreement"] == 1.0 and r["ppl_kernels"] == r["ppl_reference"] < 1e4
    decode_check.render(tmp_path / "decode_check.json")
    assert "| w8a16-rtn | 2 |" in (tmp_path / "decode_check.md").read_text()
