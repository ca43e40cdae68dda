"""Run Triton kernels on the CPU through Triton's interpreter, whichever order pytest imports in.

``TRITON_INTERPRET`` is read when Triton is first imported. A test module that imports this one
before anything imports Triton switches the interpreter on; when Triton was already imported
compiled-mode (another test module got there first), the mode is never flipped under it
(``TRITON_PREIMPORTED``): that module's tests skip here and ``run_in_fresh_process`` runs its file
again in a child process with the interpreter on (see test_kernels_triton.py for why).
"""
from __future__ import annotations

import os
import subprocess
import sys

TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not TRITON_PREIMPORTED:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def run_in_fresh_process(test_file: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``test_file``'s tests under pytest in a child process with the interpreter on; fail
    with the end of its output unless they pass."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done
