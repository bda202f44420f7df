#!/usr/bin/env bash
# Create ./.venv (if needed) and install hf_attnswap with its dev extras.
# torch==2.13.0 is installed first: on this project's machines it is a CPU build on local disk, and a bare
# `torch` requirement would pull a multi-GB CUDA build. Set ATTNSWAP_TORCH to choose another pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
echo "==> installing torch ${ATTNSWAP_TORCH:-2.13.0}"
python -m pip install -q "torch==${ATTNSWAP_TORCH:-2.13.0}"
echo "==> installing hf_attnswap (editable, with dev extras)"
python -m pip install -q -e ".[dev]"
