"""Kernels built for the H100 (sm_90) without a GPU: a script that compiles them with Triton's
bundled ``ptxas`` runs in a fresh process (the kernel tests switch pytest's own process to the
interpreter, under which nothing can be compiled for a device) and prints a JSON report last."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_sm90_script(script: str, timeout: int = 300) -> dict:
    """The report ``script`` prints on its last line; skips where this Triton ships no ``ptxas``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("this Triton build ships no ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
