"""Not a test module: the child process the checkpoint tests run to load checkpoints with plain
transformers, in a Python that never imports lowbit (pytest collects nothing here).

``python test_io_child.py jobs.json`` reads ``[{"dir", "ref"}...]`` (``ref``: a torch file holding
``ids`` and the in-memory quantized model's ``logits``), loads each ``dir`` with
``AutoModelForCausalLM.from_pretrained`` and prints one JSON line: per job the largest logit
difference, or the exception raised; plus whether lowbit was ever imported.
"""
from __future__ import annotations

import json
import sys


def run(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    ref = torch.load(job["ref"])
    try:
        model = AutoModelForCausalLM.from_pretrained(job["dir"]).eval()
    except Exception as e:  # the native-without-lowbit jobs expect this
        return {"dir": job["dir"], "error": type(e).__name__, "message": str(e)[:300]}
    with torch.no_grad():
        logits = model(ref["ids"]).logits
    return {"dir": job["dir"], "max_abs_diff": (logits - ref["logits"]).abs().max().item(),
            "ref_max_abs": ref["logits"].abs().max().item(), "ppl": next_token_ppl(logits, ref["ids"])}


def next_token_ppl(logits, ids) -> float:
    """Perplexity of ``ids (n, seq)`` under ``logits (n, seq, vocab)``, every window's next tokens."""
    import torch

    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten())
    return float(torch.exp(nll))


def main(path: str) -> None:
    with open(path) as f:
        jobs = json.load(f)
    results = [run(job) for job in jobs]
    print(json.dumps({"results": results, "lowbit_imported": any(m.split(".")[0] == "lowbit" for m in sys.modules)}))


def run_child(jobs: list[dict], workdir) -> dict:
    """Parent side: run the jobs in a fresh interpreter and return its JSON report."""
    import os
    import subprocess
    from pathlib import Path

    jobs_file = Path(workdir) / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, str(jobs_file)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main(sys.argv[1])
