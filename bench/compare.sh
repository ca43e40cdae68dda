#!/usr/bin/env bash
# lowbit beside llm-compressor on SmolLM2, one command, one table:
#   1. the FP model saved once as a dense float32 copy (bench/fp_copy.py), loaded by every process;
#   2. llm-compressor's recipes in its own venv (bench/peers/run_llmcompressor.sh; venv made on first use);
#   3. lowbit's recipes, then every checkpoint evaluated in lockstep with one FP pass
#      (bench/quality.py), rows merged into bench/results/quality.json, quality.md rendered and printed.
# Usage: bench/compare.sh [quality.py options]      e.g. --max-windows 4 for a quick look
# Env: PEER_RECIPES="w4a16-rtn w3a16-rtn" limits the peer's recipes; GPTQMODEL_RECIPES="w4a16-gptq
# w3a16-gptq" also runs GPTQModel's (bench/peers/run_gptqmodel.sh; off by default: slow on a CPU);
# LOWBIT_BENCH_WORK moves the checkpoints (default ./lowbit-out-bench, git-ignored).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export LOWBIT_BENCH_WORK="${LOWBIT_BENCH_WORK:-$root/lowbit-out-bench}"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
py="${LOWBIT_PYTHON:-$root/.venv/bin/python}"
start=$SECONDS
"$py" "$here/fp_copy.py" >/dev/null
# shellcheck disable=SC2086
"$here/peers/run_llmcompressor.sh" ${PEER_RECIPES:-}
peers=(--peers "$LOWBIT_BENCH_WORK/llmcompressor")
if [[ -n "${GPTQMODEL_RECIPES:-}" ]]; then
  # shellcheck disable=SC2086
  "$here/peers/run_gptqmodel.sh" $GPTQMODEL_RECIPES
  peers+=(--peers "$LOWBIT_BENCH_WORK/gptqmodel")
fi
peer_s=$((SECONDS - start))
"$py" "$here/quality.py" "${peers[@]}" "$@"
echo "compare.sh: peer quantization ${peer_s}s, total $((SECONDS - start))s" >&2
