#!/usr/bin/env bash
# README command 1: set up, prepare the offline assets, then the main job: a short continued pretraining of the
# real SmolLM2-135M with daGPAM attention on the offline news text, the same run with softmax as the control,
# and a side-by-side table of held-out perplexity before and after. A few minutes on a 2-core CPU.
# Extra arguments go to both runs, e.g.  bash scripts/demo.sh --max_train_steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
attnswap prepare-assets
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
config=recipes/configs/demo_smollm2.yaml
echo "== 1/3 continued pretraining with daGPAM ($config)"
python recipes/continue_pretrain.py --config "$config" --overwrite_output_dir "$@"
echo "== 2/3 the control: the same run with softmax attention"
python recipes/continue_pretrain.py --config "$config" --attn softmax --output_dir runs/demo/softmax --overwrite_output_dir "$@"
echo "== 3/3 side by side"
python recipes/compare_runs.py runs/demo/softmax runs/demo/dagpam
