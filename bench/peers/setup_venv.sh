#!/usr/bin/env bash
# Creates (or reuses) the peer tool's own virtual environment: llm-compressor pins versions that
# differ from lowbit's, so it never shares our venv. torch goes in first, from the CPU wheel, so
# that llm-compressor's `torch` requirement is already met and pip never pulls a CUDA build.
# Usage: bench/peers/setup_venv.sh            -> prints the venv's python path on the last line
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LLMC_VENV:-$here/.venv-llmcompressor}"
source "$here/peer_venv.sh"
# Versions of the reference measurement in shared/BENCHMARK.md ("Numbers to beat").
PEER_SPECS=(llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0)
# Needed to read the GGUF model and to measure peak memory; not pinned by the peer.
EXTRA_SPECS=(gguf psutil)
make_peer_venv "$venv" "import llmcompressor, compressed_tensors, transformers, torch; print('peer venv:', llmcompressor.__version__, compressed_tensors.__version__, transformers.__version__, torch.__version__)" "${PEER_SPECS[@]}" "${EXTRA_SPECS[@]}"
