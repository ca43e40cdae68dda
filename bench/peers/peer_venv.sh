# Sourced by the setup_*venv.sh scripts: make_peer_venv VENV CHECK SPEC... creates (or reuses)
# a peer tool's own virtual environment. torch==2.13.0 goes in first, from the CPU wheel
# directory when there is one (TORCH_WHEELS, default /opt/wheels), so the peer's `torch`
# requirement is already met and pip never pulls a CUDA build; torch is named again with the
# peer's specs so the resolver keeps that build. CHECK is Python run in the venv once installed.
# Prints the venv's python path on the last line.
TORCH_SPEC="torch==2.13.0"

make_peer_venv() {
  local venv="$1" check="$2"
  shift 2
  local stamp="$venv/.lowbit-peer-ready"
  if [[ -f "$stamp" ]]; then
    echo "$venv/bin/python"
    return 0
  fi
  "${PYTHON:-python3}" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  local wheels="${TORCH_WHEELS:-/opt/wheels}"
  if [[ -d "$wheels" ]]; then
    "${pip[@]}" --find-links "$wheels" "$TORCH_SPEC"
  else
    "${pip[@]}" "$TORCH_SPEC"
  fi
  "${pip[@]}" "$@" "$TORCH_SPEC"
  "$venv/bin/python" -c "$check"
  touch "$stamp"
  echo "$venv/bin/python"
}
