"""The benchmark scripts run end to end on tiny sizes and write every cell to their JSON (no timing asserted:
speed is what the scripts report, never what a test checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_attention_benchmark(tmp_path):
    result = run_script("attention.py", "--lengths", "64", "--repeats", "1", "--heads", "2", "--dim", "16",
                        "--memory", "--memory-lengths", "64", "--memory-repeats", "1", tmp_path=tmp_path)
    cells = {(r["cell"], r["pass"]) for r in result["time"]}
    for cell in ("native/sdpa", "native/sdpa-x2", "softmax/fused", "dagpam/fused", "dagpam/reference",
                 "polynomial/fused", "polynomial/reference"):
        assert {(cell, "fwd"), (cell, "fwd+bwd")} <= cells
    assert all(r["ratio"] == 1.0 for r in result["time"] if r["cell"] == "native/sdpa")
    memory = {m["cell"]: m for m in result["memory"]}
    assert memory["native/sdpa"]["ratio"] == 1.0 and memory["dagpam/fused"]["peak_mib"] is not None
    assert result["machine"]["torch"]


@pytest.mark.parametrize(("script", "args"), [
    ("train_step.py", ["--seq-len", "32", "--layers", "1", "--repeats", "1"]),
    ("decode.py", ["--prompt-len", "16", "--new-tokens", "2", "--layers", "1", "--repeats", "1"]),
])
def test_model_benchmarks(tmp_path, script, args):
    result = run_script(script, *args, tmp_path=tmp_path)
    cells = [r["cell"] for r in result["results"]]
    assert len(cells) == 4 and any("dagpam" in c for c in cells) and any("polynomial" in c for c in cells)
    assert result["results"][0]["ratio"] == 1.0


def test_linear_attention_benchmark(tmp_path):
    result = run_script("linear_attention.py", "--lengths", "256", "--backward-lengths", "256", "--decode-lengths", "256",
                        "--repeats", "1", "--decode-repeats", "1", "--heads", "2", "--dim", "8", tmp_path=tmp_path)
    for part in ("forward", "forward_backward"):
        assert {r["cell"] for r in result[part]} == {"sdpa", "fused", "linear"}
    (decode,) = result["decode"]
    assert decode["state_bytes"] == (8 * 9 // 2) * 8 * 2 * 4  # D x d per KV head, fp32: independent of N
    assert decode["kv_bytes"] >= 2 * 2 * 256 * 8 * 4  # keys and values of 256 tokens
