#!/usr/bin/env bash
# README command 1: set up, prepare the offline assets, run the demo on real SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
attnswap prepare-assets
attnswap demo "$@"
