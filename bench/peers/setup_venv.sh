#!/usr/bin/env bash
# Creates (or reuses) the peer tool's own virtual environment: llm-compressor pins versions that
# differ from lowbit's, so it never shares our venv. torch goes in first, from the CPU wheel, so
# that llm-compressor's `torch` requirement is already met and pip never pulls a CUDA build.
# Usage: bench/peers/setup_venv.sh            -> prints the venv's python path on the last line
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LLMC_VENV:-$here/.venv-llmcompressor}"
py="${PYTHON:-python3}"

# Versions of the reference measurement in shared/BENCHMARK.md ("Numbers to beat").
TORCH_SPEC="torch==2.13.0"
PEER_SPECS=(llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0)
# Needed to read the GGUF model and to measure peak memory; not pinned by the peer.
EXTRA_SPECS=(gguf psutil)

stamp="$venv/.lowbit-peer-ready"
if [[ -f "$stamp" ]]; then
  echo "$venv/bin/python"
  exit 0
fi

"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
# CPU torch first, from the local wheel directory when there is one (TORCH_WHEELS, default
# /opt/wheels, holds torch-2.13.0+cpu here); pip's own configuration may point there too.
wheels="${TORCH_WHEELS:-/opt/wheels}"
if [[ -d "$wheels" ]]; then
  "${pip[@]}" --find-links "$wheels" "$TORCH_SPEC"
else
  "${pip[@]}" "$TORCH_SPEC"
fi
"${pip[@]}" "${PEER_SPECS[@]}" "${EXTRA_SPECS[@]}" "$TORCH_SPEC"
"$venv/bin/python" -c "import llmcompressor, compressed_tensors, transformers, torch; print('peer venv:', llmcompressor.__version__, compressed_tensors.__version__, transformers.__version__, torch.__version__)"
touch "$stamp"
echo "$venv/bin/python"
