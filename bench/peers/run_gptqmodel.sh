#!/usr/bin/env bash
# Quantize SmolLM2 with GPTQModel, every recipe of its table (or those named), in the peer's own
# venv (created on first use), one process per recipe. Checkpoints (GPTQ layout) land in
# $WORK/gptqmodel/<recipe>/ with bench.json beside the weights; evaluate them in lowbit's venv:
#   bench/quality.py --peers $WORK/gptqmodel
# Usage: bench/peers/run_gptqmodel.sh [RECIPE ...]
# GPTQMODEL_ARGS adds options to every run (e.g. "--calib-samples 8" for a smoke test).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
WORK="${LOWBIT_BENCH_WORK:-$root/lowbit-out-bench}"
OURS="${LOWBIT_PYTHON:-$root/.venv/bin/python}"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
read -r -a extra <<< "${GPTQMODEL_ARGS:-}"

peer_py="$("$here/setup_gptqmodel_venv.sh" | tail -n 1)"
# The float model as every benchmark process loads it (bench/fp_copy.py, run in lowbit's venv).
model="$(LOWBIT_BENCH_WORK="$WORK" "$OURS" "$root/bench/fp_copy.py" | tail -n 1)"
if [[ $# -gt 0 ]]; then
  recipes=("$@")
else
  mapfile -t recipes < <("$peer_py" "$here/gptqmodel_quantize.py" --list |
    "$OURS" -c 'import json,sys; print("\n".join(r["name"] for r in json.load(sys.stdin)))')
fi
mkdir -p "$WORK/gptqmodel"
for r in "${recipes[@]}"; do
  echo "== gptqmodel $r"
  "$peer_py" "$here/gptqmodel_quantize.py" --recipe "$r" --model "$model" \
    --out "$WORK/gptqmodel/$r" "${extra[@]}" > "$WORK/gptqmodel/$r.log" 2>&1 \
    || { tail -n 20 "$WORK/gptqmodel/$r.log"; exit 1; }
  tail -n 1 "$WORK/gptqmodel/$r.log"
done
