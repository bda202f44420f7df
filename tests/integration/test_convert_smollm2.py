"""recipes/convert.py end to end on the real SmolLM2-135M and the real Wikipedia and news text, a few steps per
stage: it runs, the saved model reloads with no keyword and generates. Skipped without the assets, unless
ATTNSWAP_REQUIRE_ASSETS=1 (as in CI)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_attnswap  # noqa: F401
from hf_attnswap.data.assets import is_prepared
from hf_attnswap.training.loop import run_recipe

pytestmark = pytest.mark.integration

if not all(is_prepared(a) for a in ("smollm2", "wiki-text", "news-text")):
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError("assets are missing; run `attnswap prepare-assets` (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip("assets not prepared: run `attnswap prepare-assets`", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_conversion_of_smollm2_runs_reloads_and_generates(tmp_path):
    spec = importlib.util.spec_from_file_location("convert", ROOT / "recipes" / "convert.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    out = tmp_path / "convert"
    argv = ["--config", str(ROOT / "recipes" / "configs" / "convert_smollm2_polynomial.yaml"), "--output_dir", str(out),
            "--max_transfer_steps", "2", "--max_train_steps", "1", "--block_size", "64",
            "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "2", "--max_eval_samples", "2",
            "--eval_max_tokens", "128", "--eval_steps", "none", "--checkpointing_steps", "none",
            "--max_train_samples", "4", "--disable_progress_bar"]
    torch.manual_seed(0)
    AcceleratorState._reset_state(True)
    assert run_recipe(lambda: convert.main(argv)) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["phases"]) == ["base", "swapped", "stage1", "stage2"]
    ppl = results["phases"]
    name = "train-corpus held out"
    assert ppl["swapped"]["ppl"][name] > 100 * ppl["base"]["ppl"][name]  # the raw swap is bad
    assert ppl["stage1"]["ppl"][name] < ppl["swapped"]["ppl"][name]  # calibration + 2 transfer steps help
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config._attn_implementation == "polynomial" and model.config.attnswap["degree"] == 3
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok("The capital of France is", return_tensors="pt")
    generated = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert generated.shape[1] == enc["input_ids"].shape[1] + 4
