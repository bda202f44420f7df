#!/usr/bin/env bash
# One command for a CUDA machine, which may be lent for minutes only: the GPU tests without the Triton interpreter,
# the attention benchmark in bf16 and fp32 at T in {1k, 4k, 16k}, the linear-attention and generation benchmarks.
# Every JSON (and every log) goes under one folder. Budget: under 8 minutes on one modern GPU.
#
#   bash scripts/gpu_check.sh [OUT_DIR]     # default benchmarks/results/gpu_<date>; PYTHON=... picks the interpreter
#
# Exit codes: 0 all steps passed; 1 a step failed (the others still ran; see OUT_DIR/summary.txt);
# 2 no CUDA device (nothing is run).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); scripts/gpu_check.sh runs" \
         "the GPU tests and benchmarks only on a CUDA machine. On a CPU, run the test suite and benchmarks/*.py instead." >&2
    exit 2
fi
OUT="${1:-benchmarks/results/gpu_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled Triton kernels, not the interpreter
"$PYTHON" -c "import json, torch; print(json.dumps({'device': torch.cuda.get_device_name(), 'torch': torch.__version__, \
'cuda': torch.version.cuda}))" > "$OUT/device.json"
status=0
: > "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local line="$name: rc=$rc in $((SECONDS - start)) s"
    [ "$rc" -eq 124 ] && line="$line (timed out after $limit s)"
    echo "$line" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

step tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_triton_kernel.py tests/test_cuda.py \
    --junitxml "$OUT/tests.xml"
for dtype in bfloat16 float32; do
    step "attention_$dtype" 75 "$PYTHON" benchmarks/attention.py --lengths 1024,4096,16384 --repeats 3 \
        --max-reference 4096 --dtype "$dtype" --json "$OUT/attention_$dtype.json"
done
step linear_attention 60 "$PYTHON" benchmarks/linear_attention.py --lengths 4096,16384 --backward-lengths 4096 \
    --decode-lengths 4096,16384 --repeats 3 --json "$OUT/linear_attention.json"
step generate 90 "$PYTHON" benchmarks/generate.py --contexts 512,4096,16384,32768 --steps 10 --json "$OUT/generate.json"
echo "results in $OUT ($(ls "$OUT" | tr '\n' ' '))"
exit "$status"
