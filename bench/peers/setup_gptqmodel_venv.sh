#!/usr/bin/env bash
# Creates (or reuses) GPTQModel's own virtual environment, apart from lowbit's and llm-compressor's.
# torch goes in first, from the CPU wheel, so that GPTQModel's `torch` requirement is already met
# and pip never pulls a CUDA build.
#
# GPTQModel 7.7.0 (the newest) requires torch>=2.14.1, which this machine has no CPU wheel of
# (pip's constraints cap torch at the releases on disk, /opt/wheels holds 2.13.0+cpu); 7.6.0 is
# the newest release that accepts torch 2.13 (torch>=2.8.0). Since 7.x the sdist is pure Python
# (setup.py builds no extension; its CUDA/C++ kernels are compiled at first use, and none is
# needed for GPTQ quantization on a CPU), so no BUILD_CUDA_EXT-style switch is needed.
# Usage: bench/peers/setup_gptqmodel_venv.sh   -> prints the venv's python path on the last line
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${GPTQMODEL_VENV:-$here/.venv-gptqmodel}"
source "$here/peer_venv.sh"
PEER_SPECS=(gptqmodel==7.6.0)
# Needed to measure peak memory; not pinned by the peer.
EXTRA_SPECS=(psutil)
make_peer_venv "$venv" "import gptqmodel, transformers, torch; print('peer venv:', gptqmodel.__version__, transformers.__version__, torch.__version__)" "${PEER_SPECS[@]}" "${EXTRA_SPECS[@]}"
