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


def _tiny_base_and_text(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import WORDS, tiny_config, word_tokenizer

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[4 + int(i)] for i in torch.randint(0, 60, (60,), generator=g)) for _ in range(30)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return base, tmp_path / "text.jsonl"


def test_transfer_errors(tmp_path):
    """Per-layer relative transfer errors of a converted model; here the 'converted' weights are the base's own, so
    the converted row equals the right-after-the-swap row, and calibration can only lower the error."""
    from conftest import tiny_config

    base, text = _tiny_base_and_text(tmp_path)
    result = run_script("transfer_errors.py", "--base", str(base), "--converted", str(base), "--data",
                        str(text), "--block-size", "16", "--batch-size", "2", "--batches", "2",
                        "--attn", "polynomial:degree=3", tmp_path=tmp_path)
    rows = result["relative_error"]
    assert list(rows) == ["right after the swap", "after calibration", "converted"]
    assert all(len(v) == tiny_config("llama").num_hidden_layers for v in rows.values())
    assert rows["converted"] == pytest.approx(rows["right after the swap"], rel=1e-5)
    assert all(c <= s * (1 + 1e-6) for c, s in zip(rows["after calibration"], rows["right after the swap"]))
    bounds = result["converted_with_best_gain"]
    assert list(bounds) == ["per_head", "per_head_and_position", "per_head_and_query"]
    for layer, err in enumerate(rows["converted"]):  # each finer gain can only lower the error
        assert bounds["per_head_and_query"][layer] <= bounds["per_head_and_position"][layer] * (1 + 1e-6)
        assert bounds["per_head_and_position"][layer] <= bounds["per_head"][layer] * (1 + 1e-6) <= err * (1 + 1e-5)


def test_transfer_layer_kl(tmp_path):
    """Next-token KL of base/converted hybrids: a 'converted' model that is the base with softmax at temperature 1
    everywhere and a changed query projection in layer 1 only differs from the base through layer 1, so only that
    layer has a KL alone, and restoring it alone brings the KL back to zero."""
    import torch
    from transformers import AutoModelForCausalLM

    import hf_attnswap
    from conftest import tiny_config

    base, text = _tiny_base_and_text(tmp_path)
    converted = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    hf_attnswap.swap(converted, "softmax", temperature=1.0)
    with torch.no_grad():
        converted.model.layers[1].self_attn.q_proj.weight.mul_(4.0)
    converted.save_pretrained(tmp_path / "converted")
    result = run_script("transfer_layer_kl.py", "--base", str(base), "--converted", str(tmp_path / "converted"),
                        "--data", str(text), "--block-size", "16", "--batch-size", "2", "--batches", "2",
                        tmp_path=tmp_path)
    layers = tiny_config("llama").num_hidden_layers
    only, restore = result["only"], result["restore"]
    assert len(only) == len(restore) == layers >= 2
    assert result["no_layer_converted_max_logit_gap"] < 1e-4
    assert only[1]["kl"] > 1e-4 and result["all_converted"]["kl"] == pytest.approx(only[1]["kl"], rel=1e-3)
    assert all(abs(only[i]["kl"]) < 1e-6 for i in range(layers) if i != 1)
    assert abs(restore[1]["kl"]) < 1e-6 and all(restore[i]["kl"] > 1e-4 for i in range(layers) if i != 1)
    assert restore[1]["ppl"] == pytest.approx(result["base_ppl"], rel=1e-4)


def test_transfer_layer_kl_refuses_a_fine_tuned_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base, text = _tiny_base_and_text(tmp_path)
    tuned = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    with torch.no_grad():
        tuned.model.layers[0].mlp.up_proj.weight.add_(0.1)
    tuned.save_pretrained(tmp_path / "tuned")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transfer_layer_kl.py"), "--base", str(base),
                           "--converted", str(tmp_path / "tuned"), "--data", str(text), "--block-size", "16"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "error:" in proc.stderr and "mlp.up_proj" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_transfer_step_benchmark(tmp_path):
    """The stage-1 step and calibration timings run on a tiny saved model and write their JSON."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config, word_tokenizer

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    result = run_script("transfer_step.py", "--base", str(base), "--block-size", "16", "--batch-size", "2",
                        "--repeats", "1", "--factors", "3", tmp_path=tmp_path)
    assert set(result["step_seconds"]) == {"replay", "whole network"}
    assert set(result["calibration_seconds"]) == {"cached teacher", "teacher per factor"}
    assert all(t > 0 for t in [*result["step_seconds"].values(), *result["calibration_seconds"].values()])


def test_attention_benchmark_in_bfloat16(tmp_path):
    result = run_script("attention.py", "--lengths", "64", "--repeats", "1", "--heads", "2", "--dim", "16",
                        "--dtype", "bfloat16", tmp_path=tmp_path)
    assert result["args"]["dtype"] == "bfloat16"
    assert {"native/sdpa", "polynomial/fused", "dagpam/fused"} <= {r["cell"] for r in result["time"]}


def test_generate_benchmark(tmp_path):
    result = run_script("generate.py", "--quick", tmp_path=tmp_path)
    rows = {(r["cell"], r["context"]): r for r in result["results"]}
    assert set(rows) == {(c, n) for c in ("sdpa", "fused", "linear") for n in (64, 128)}
    assert all(rows["sdpa", n]["ratio"] == 1.0 for n in (64, 128))
    assert rows["linear", 64]["cache_bytes"] == rows["linear", 128]["cache_bytes"]  # a fixed-size state
    assert rows["sdpa", 128]["cache_bytes"] == 2 * rows["sdpa", 64]["cache_bytes"] > 0  # a KV cache grows
    assert all(r["tokens_per_second"] > 0 for r in rows.values())


def test_gpu_check_refuses_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "/nonexistent/should-not-be-made"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: no CUDA device") and not Path("/nonexistent/should-not-be-made").exists()


@pytest.mark.parametrize(("script", "json_name", "extra"), [
    ("transfer_layer_kl.py", "transfer_layer_kl.json", []),
    ("transfer_errors.py", "transfer_errors.json", ["--attn", "polynomial:degree=3"])])
def test_transfer_diagnostics_never_overwrite_a_result(tmp_path, script, json_name, extra):
    """The default JSON goes beside the converted model; a second run refuses to replace it (before any work) unless
    --overwrite, and --json with a new path keeps the first."""
    base, text = _tiny_base_and_text(tmp_path)
    earlier = base / json_name
    earlier.write_text('{"earlier": true}')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "benchmarks" / script), "--base", str(base), "--converted", str(base),
            "--data", str(text), "--block-size", "16", "--batch-size", "2", "--batches", "1", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "error:" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and earlier.read_text() == '{"earlier": true}'
    proc = subprocess.run([*args, "--overwrite"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "earlier" not in json.loads(earlier.read_text())
