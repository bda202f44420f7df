#!/usr/bin/env bash
# README command 2: set up, prepare the offline assets, run the whole test suite (unit + integration).
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
attnswap prepare-assets
python -m pytest "$@"
