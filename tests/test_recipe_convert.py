"""recipes/convert.py on a tiny GPT-2 and Llama: both stages, outputs, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hf_attnswap
from hf_attnswap.training.loop import run_recipe

from conftest import tiny_config, word_documents, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _load("convert")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A word-level tokenizer, tiny GPT-2 and Llama checkpoints, a training corpus and a second evaluation corpus."""
    root = tmp_path_factory.mktemp("convert_assets")
    tok = word_tokenizer()
    for arch in ("gpt2", "llama"):
        tok.save_pretrained(root / arch)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="sdpa").save_pretrained(root / arch)
    g = torch.Generator().manual_seed(0)
    for name, n in (("train", 40), ("other", 6)):
        docs = word_documents(n, (10, 40), g)
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def _argv(assets: Path, out: Path, *extra: str, arch: str = "gpt2", attn: str = "polynomial:degree=3") -> list[str]:
    return ["--model_name_or_path", str(assets / arch), "--attn", attn, "--train_file", str(assets / "train.jsonl"),
            "--validation_split_percentage", "10", "--eval_datasets", str(assets / "other.jsonl"),
            "--block_size", "16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--max_transfer_steps", "4", "--transfer_learning_rate", "1e-2", "--max_train_steps", "3",
            "--learning_rate", "1e-3", "--disable_progress_bar", "--output_dir", str(out), *extra]


def _run(argv: list[str]) -> int:
    AcceleratorState._reset_state(True)
    return run_recipe(lambda: convert.main(argv))


@pytest.mark.parametrize("arch,attn", [("gpt2", "polynomial:degree=3"), ("llama", "dagpam:lambda_init=0.3"),
                                       ("llama", "polynomial:degree=2:backend=linear")])
def test_both_stages_run_and_the_output_is_a_normal_swapped_model(assets, tmp_path, arch, attn):
    out = tmp_path / "run"
    assert _run(_argv(assets, out, arch=arch, attn=attn)) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["phases"]) == ["base", "swapped", "stage1", "stage2"]
    for phase in results["phases"].values():
        assert set(phase["ppl"]) == {"train-corpus held out", str(assets / "other.jsonl")}
    s1 = results["phases"]["stage1"]
    assert s1["steps"] == 4 and s1["tokens"] == 4 * 2 * 2 * 16 and len(s1["loss"]) == 4
    assert results["phases"]["stage2"]["steps"] == 3
    # the wall time covers loading and every measurement besides the two stages' training
    assert len(results["wall_seconds_per_invocation"]) == 1
    assert results["wall_seconds"] == results["wall_seconds_per_invocation"][0] > results["seconds"] > 0
    assert (out / "conversion.png").stat().st_size > 1000
    assert all(len(v) == 2 for v in s1["relative_error"].values())  # per layer, at the first and the last steps
    assert results["command"][1].endswith("convert.py") and "--max_transfer_steps" in results["command"]
    model = AutoModelForCausalLM.from_pretrained(out)  # no keyword: the mechanism is in config.json
    assert model.config._attn_implementation == attn.split(":")[0]
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    base = load_file(assets / arch / "model.safetensors")
    stage1 = load_file(out / "stage1" / "model.safetensors")
    moved = {k for k in base if k in stage1 and not torch.equal(base[k], stage1[k])}
    if not attn.startswith("dagpam"):  # stage 1 trains only the query/key projections of a mechanism without parameters
        assert moved
        assert all(any(p in k for p in ("c_attn", "q_proj", "k_proj")) for k in moved)
    else:  # and only the mechanism's own parameters of one with them
        assert not moved and any("attnswap" in k for k in stage1)


def test_stage2_alone_and_stage1_alone(assets, tmp_path):
    assert _run(_argv(assets, tmp_path / "s2", "--max_transfer_steps", "0")) == 0
    phases = json.loads((tmp_path / "s2" / "results.json").read_text())["phases"]
    assert list(phases) == ["base", "swapped", "stage2"]
    assert _run(_argv(assets, tmp_path / "s1", "--skip_finetune")) == 0
    results = json.loads((tmp_path / "s1" / "results.json").read_text())
    assert results["final_phase"] == "stage1"
    AutoModelForCausalLM.from_pretrained(tmp_path / "s1")


def test_train_backend_trains_with_one_backend_and_measures_and_saves_the_targets(assets, tmp_path, monkeypatch,
                                                                                  capsys):
    mech = hf_attnswap.get_mechanism("polynomial")
    calls = {"fused": 0, "linear": 0}

    def counting(name):
        fn = mech.fast[name]

        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    for name in calls:
        monkeypatch.setitem(mech.fast, name, counting(name))
    out = tmp_path / "tb"
    argv = _argv(assets, out, "--train_backend", "fused", arch="llama", attn="polynomial:degree=2:backend=linear")
    assert _run(argv) == 0
    layers = 2 * 3  # tiny llama layers x perplexity passes is at least this
    assert calls["fused"] > 0 and calls["linear"] >= layers
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attnswap"]["backend"] == "linear"
    fused_after_training = calls["fused"]
    AutoModelForCausalLM.from_pretrained(out)(torch.tensor([[5, 6, 7]]))
    assert calls["fused"] == fused_after_training  # the saved model runs its own backend
    assert _run(_argv(assets, tmp_path / "bad", "--train_backend", "nope")) == 2
    assert "train_backend='nope' is not a backend of polynomial" in capsys.readouterr().err


def test_finetune_trainable_trains_only_what_it_names(assets, tmp_path, capsys):
    """Stage 2 with finetune_trainable=self_attn: the MLPs, norms and embeddings end bit-identical to stage 1's, the
    attention projections move; results.json names what trained; mid-run evaluations score every corpus, and the
    loop does not evaluate the final model again (the phase's measurement does)."""
    out = tmp_path / "attn_only"
    argv = _argv(assets, out, "--finetune_trainable", "self_attn", "--eval_steps", "2", arch="llama",
                 attn="polynomial:degree=2:backend=linear")
    assert _run(argv) == 0
    stage1, final = load_file(out / "stage1" / "model.safetensors"), load_file(out / "model.safetensors")
    moved = {k for k in stage1 if not torch.equal(stage1[k], final[k])}
    assert moved and all("self_attn" in k for k in moved)
    assert any(k.endswith("v_proj.weight") for k in moved) and any(k.endswith("o_proj.weight") for k in moved)
    trained = json.loads((out / "results.json").read_text())["phases"]["stage2"]["trainable"]
    assert trained and all("self_attn" in k for k in trained)
    evals = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines() if "eval/ppl" in line]
    assert [e["step"] for e in evals] == [2]  # the final model is measured once, by the stage-2 phase
    assert all(e[f"eval/ppl/{assets / 'other.jsonl'}"] > 0 for e in evals)
    assert _run(_argv(assets, tmp_path / "bad", "--finetune_trainable", "no_such_weight")) == 2
    assert "'no_such_weight' matches no parameter" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "stage1").exists()  # refused before stage 1, not after it
    assert _run(_argv(assets, tmp_path / "bad2", "--finetune_trainable", "self_attn", "--lora")) == 2
    assert "lora_target_modules" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()


def test_learning_rate_patterns_in_stage2(assets, tmp_path, capsys):
    """Stage 2 trains the weights that learning_rate_patterns names at their own rate (the schedule scales both
    alike); a pattern that matches no stage-2 weight, and a transfer_trainable without a pattern, are refused
    before stage 1."""
    out = tmp_path / "qk_lr"
    assert _run(_argv(assets, out, "--learning_rate_patterns", "q_proj|k_proj=5e-3", arch="llama")) == 0
    steps = [r for r in map(json.loads, (out / "stage2" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 3 and any(r["lr/decay"] > 0 for r in steps)
    for r in steps:
        assert r["lr/decay:q_proj|k_proj"] == pytest.approx(5 * r["lr/decay"])
    stage1 = [r for r in map(json.loads, (out / "stage1" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert stage1 and not any(k.startswith("lr/decay:") for r in stage1 for k in r)  # stage 1 keeps its own rate
    assert _run(_argv(assets, tmp_path / "bad", "--learning_rate_patterns", "no_such_weight=1e-3")) == 2
    assert "'no_such_weight' matches no trainable parameter" in capsys.readouterr().err
    assert _run(_argv(assets, tmp_path / "bad2", "--finetune_trainable", "mlp", "--learning_rate_patterns",
                      "q_proj=1e-3", arch="llama")) == 2  # q_proj does not train in stage 2
    assert "'q_proj' matches no trainable parameter" in capsys.readouterr().err
    assert _run(_argv(assets, tmp_path / "bad3", "--transfer_trainable", " , ")) == 2
    assert "transfer_trainable names no pattern" in capsys.readouterr().err
    assert not any((tmp_path / b / "stage1").exists() for b in ("bad", "bad2", "bad3"))


def test_lora_stage2_saves_a_merged_model_that_reloads(assets, tmp_path):
    """Stage 2 with LoRA (distilled): the output folder holds the merged model (no adapter weights), which reloads
    with no keyword as the linear-backend model; the linear layers moved, the embeddings and norms, which LoRA does
    not adapt, are stage 1's bit for bit."""
    out = tmp_path / "lora"
    argv = _argv(assets, out, "--lora", "--lora_r", "4", "--lora_alpha", "8", "--distill_kl_weight", "1.0",
                 arch="llama", attn="polynomial:degree=2:backend=linear:offset=0.3")
    assert _run(argv) == 0
    stage1, final = load_file(out / "stage1" / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(stage1) == set(final) and not any("lora" in k for k in final)
    moved = {k for k in stage1 if not torch.equal(stage1[k], final[k])}
    assert any("mlp" in k for k in moved) and any("self_attn" in k for k in moved)
    assert not any("embed" in k or "norm" in k for k in moved)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.attnswap["mechanism"] == "polynomial" and model.config.attnswap["backend"] == "linear"
    results = json.loads((out / "results.json").read_text())
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    assert torch.isfinite(model(ids).logits).all() and results["phases"]["stage2"]["steps"] == 3


def test_lora_modules_to_save_trains_the_named_modules_fully(assets, tmp_path, capsys):
    """``--lora_modules_to_save input_layernorm,post_attention_layernorm``: each decoder layer's two norms train beside the adapters and are merged
    into the saved model; the final norm (``model.norm``) and the embeddings stay stage
    1's; ``learning_rate_patterns`` can set the adapters' rate. A name that names no module (``layernorm``, a suffix but no whole part), the option
    without LoRA, and a learning-rate pattern that matches no adapter (checked on :func:`lora_preview`'s names)
    are errors before anything trains."""
    out = tmp_path / "norms"
    argv = _argv(assets, out, "--lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_modules_to_save",
                 "input_layernorm,post_attention_layernorm", "--learning_rate_patterns", "lora_B=2e-3", arch="llama",
                 attn="polynomial:degree=2:backend=linear:offset=0.3")
    assert _run(argv) == 0
    steps = [r for r in map(json.loads, (out / "stage2" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert all(r["lr/decay:lora_B"] == pytest.approx(2 * r["lr/decay"]) for r in steps)  # adapters' own rate
    stage1, final = load_file(out / "stage1" / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(stage1) == set(final) and not any("lora" in k or "modules_to_save" in k for k in final)
    moved = {k for k in stage1 if not torch.equal(stage1[k], final[k])}
    norms = {k for k in stage1 if "layernorm" in k}
    assert norms and norms <= moved and "model.norm.weight" not in moved and not any("embed" in k for k in moved)
    bad = _argv(assets, tmp_path / "bad", "--lora", "--lora_modules_to_save", "input_layernorm,layernorm",
                arch="llama", attn="polynomial:degree=2:backend=linear")
    assert _run(bad) == 2
    assert "layernorm names no module" in capsys.readouterr().err  # a whole last part, not any suffix
    assert not (tmp_path / "bad" / "stage1").exists()
    assert _run(_argv(assets, tmp_path / "bad2", "--lora_modules_to_save", "layernorm", arch="llama")) == 2
    assert "set lora true" in capsys.readouterr().err
    # under LoRA the base weights are frozen: a pattern naming one is refused before stage 1, from the adapters' names
    assert _run(_argv(assets, tmp_path / "bad3", "--lora", "--learning_rate_patterns", r"q_proj\.weight=1e-3",
                      arch="llama")) == 2
    assert r"'q_proj\\.weight' matches no trainable parameter" in capsys.readouterr().err
    assert not (tmp_path / "bad3" / "stage1").exists()


def test_distilled_stage2_logs_both_terms(assets, tmp_path):
    out = tmp_path / "kl"
    assert _run(_argv(assets, out, "--distill_kl_weight", "0.5", arch="llama")) == 0
    log = [json.loads(line) for line in (out / "stage2" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 3
    for r in steps:
        assert r["distill/kl"] > 0
        assert r["loss"] == pytest.approx(r["distill/lm_loss"] + 0.5 * r["distill/kl"], rel=1e-5)
    AutoModelForCausalLM.from_pretrained(out)


def test_control_runs_the_same_stage2_on_the_unswapped_model(assets, tmp_path, capsys):
    out = tmp_path / "ctl"
    argv = _argv(assets, out, "--max_transfer_steps", "0", "--control", "--attnswap_learning_rate", "1e-2",
                 arch="llama", attn="dagpam:lambda_init=0.0")
    assert _run(argv) == 0
    results = json.loads((out / "results.json").read_text())
    s2, control = results["phases"]["stage2"], results["control"]
    # daGPAM at lambda = 0 is the original model: the first step (same seed, same batch) has the control's loss
    assert s2["loss"][0] == pytest.approx(control["loss"][0], abs=1e-5)
    assert s2["steps"] == control["steps"] == 3 and s2["tokens"] == control["tokens"]
    lam = s2["mechanism_parameters"]["lambda_param"]
    assert lam["numel"] > 0 and lam["mean_abs"] > 0  # trained away from 0
    assert control["mechanism_parameters"] == {}
    for row in results["ratio_to_base"].values():
        assert row["ratio_to_control"] == pytest.approx(row["final"] / row["control"])
    reloaded = AutoModelForCausalLM.from_pretrained(out / "control")
    assert reloaded.config._attn_implementation == "sdpa"
    assert _run(_argv(assets, tmp_path / "bad", "--control", "--skip_finetune")) == 2
    assert "skip_finetune skips stage 2" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["stage1", "stage2", "inside_stage2"])
def test_resume_after_an_interruption_gives_the_same_weights(assets, tmp_path, where, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ("--checkpointing_steps", "1", "--max_transfer_steps", "3", "--max_train_steps", "3")
    if where == "inside_stage2":  # distilled, stopped inside stage 2 by the process that also ran stage 1
        args = ("--checkpointing_steps", "1", "--max_transfer_steps", "2", "--max_train_steps", "4",
                "--distill_kl_weight", "0.5")
    assert _run(_argv(assets, full, *args)) == 0
    if where == "stage1":  # stop_after_steps stops the first stage that runs
        assert _run(_argv(assets, cut, *args, "--stop_after_steps", "2")) == 0
        assert not (cut / "results.json").exists() and not (cut / "stage1" / "model.safetensors").exists()
    elif where == "inside_stage2":  # stage 1's 2 steps are under the limit of 3; stage 2 stops after 3 of its 4
        assert _run(_argv(assets, cut, *args, "--stop_after_steps", "3")) == 0
        assert (cut / "stage1" / "model.safetensors").exists() and not (cut / "results.json").exists()
        names = {p.name for p in (cut / "stage2" / "checkpoints").glob("step_*/*")}
        assert "model.safetensors" in names and "model_1.safetensors" not in names  # only stage 2's own state
    else:
        assert _run(_argv(assets, cut, *args[:-2], "--max_train_steps", "3", "--skip_finetune")) == 0
        (cut / "results.json").unlink()
        (cut / "model.safetensors").unlink()
        state = json.loads((cut / "conversion.json").read_text())
        assert "stage1" in state
    # continuing with other evaluation settings would compare perplexities of different tokens: refused
    assert _run(_argv(assets, cut, *args, "--resume_from_checkpoint", "latest", "--eval_max_tokens", "20")) == 2
    assert "other evaluation settings" in capsys.readouterr().err
    assert _run(_argv(assets, cut, *args, "--resume_from_checkpoint", "latest")) == 0
    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((cut / "results.json").read_text())  # the refused continuation ran nothing and counts not
    walls = results["wall_seconds_per_invocation"]
    assert len(walls) == 2 and all(w > 0 for w in walls) and results["wall_seconds"] == pytest.approx(sum(walls))
    if where == "inside_stage2":  # the steps logged twice (before the stop, after the resume) count once
        stage2 = json.loads((cut / "results.json").read_text())["phases"]["stage2"]
        expected = json.loads((full / "results.json").read_text())["phases"]["stage2"]["loss"]
        assert stage2["loss"] == pytest.approx(expected) and len(expected) == 4
        assert stage2["resumed_at"] == [3]


def test_bad_input_is_a_clear_error(assets, tmp_path, capsys):
    assert _run(_argv(assets, tmp_path / "a", attn="sdpa")) == 2
    assert "is the model's own attention" in capsys.readouterr().err
    assert _run(_argv(assets, tmp_path / "b", "--transfer_trainable", "no_such_weight")) == 2
    assert "'no_such_weight' matches no parameter" in capsys.readouterr().err
    assert _run(_argv(assets, tmp_path / "c", attn="polynomial:degree=2.5")) == 2
    assert "'degree' must be an integer" in capsys.readouterr().err
    out = tmp_path / "d"
    assert _run(_argv(assets, out, "--max_train_steps", "1", "--max_transfer_steps", "1")) == 0
    assert _run(_argv(assets, out)) == 2
    assert "already holds a finished conversion" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "configs").glob("convert_smollm2_*.yaml")), ids=lambda p: p.stem)
def test_shipped_conversion_configs_parse_and_pick_a_precision_this_cpu_runs(config, monkeypatch):
    """Each shipped conversion config parses as it is, and asks for ``mixed_precision: auto``: bf16 where the CPU has
    bf16 kernels, fp32 on one without them (where an explicit bf16 would be ~100x slower and is refused)."""
    from hf_attnswap.training import loop
    from hf_attnswap.training.arguments import (ConversionArguments, DataArguments, LoraArguments, ModelArguments,
                                                TrainArguments, parse_recipe_args)

    _, _, train_args, _, conv = parse_recipe_args(
        [ModelArguments, DataArguments, TrainArguments, LoraArguments, ConversionArguments], ["--config", str(config)])
    assert train_args.mixed_precision == "auto" and conv.max_transfer_steps >= 0
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    for native, want in ((False, "no"), (True, "bf16")):
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda native=native: native)
        assert loop.resolve_mixed_precision(train_args.mixed_precision) == want
