"""recipes/continue_pretrain.py and the shared training loop, on a tiny model, tokenizer and text built here."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hf_attnswap
from hf_attnswap.training.arguments import DataArguments, ModelArguments, RecipeConfigError, TrainArguments, parse_recipe_args
from hf_attnswap.training import loop
from hf_attnswap.training.loop import run_recipe
from hf_attnswap.errors import AttnSwapError
from hf_attnswap.training.optim import parameter_groups
from hf_attnswap.training.report import compare_runs

from conftest import WORDS, tiny_config, word_documents, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "continue_pretrain.py"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("continue_pretrain", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny word-level tokenizer, a tiny GPT-2 checkpoint (dropout on) and a text file of 40 documents."""
    root = tmp_path_factory.mktemp("recipe_assets")
    tok = word_tokenizer()
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    cfg = tiny_config("gpt2", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    docs = word_documents(40, (10, 40), g)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": d, "other": 1}) + "\n" for d in docs))
    return root


def _argv(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(assets / "model"), "--attn", "dagpam:lambda_init=0.1",
            "--train_file", str(assets / "train.jsonl"), "--validation_split_percentage", "10",
            "--block_size", "16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--max_train_steps", "6", "--learning_rate", "1e-3", "--attnswap_learning_rate", "1e-2",
            "--disable_progress_bar", "--output_dir", str(out), *extra]


def _run(argv: list[str]) -> int:
    AcceleratorState._reset_state(True)
    return run_recipe(lambda: recipe.main(argv))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_run_saves_model_with_mechanism_tokenizer_logs_and_results(assets, tmp_path):
    out = tmp_path / "run"
    assert _run(_argv(assets, out, "--eval_steps", "3", "--with_tracking")) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.attnswap["mechanism"] == "dagpam"
    lam = [p for n, p in model.named_parameters() if n.endswith("lambda_param")]
    assert lam and any(abs(float(p.detach().mean()) - 0.1) > 1e-4 for p in lam), "lambda was trained and saved"
    assert (out / "tokenizer.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 6 and [e["step"] for e in results["evaluations"]] == [0, 3, 6]
    assert results["final_eval"] < results["first_eval"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert train[0]["lr/attnswap"] == pytest.approx(1e-2) and train[0]["lr/decay"] == pytest.approx(1e-3)
    assert all(r["tokens_per_second"] > 0 for r in train)
    assert list((out / "tracking").rglob("events.out.tfevents.*")), "TensorBoard event file"
    rows = compare_runs([out, out])
    assert rows[0]["first"] == results["first_eval"] and rows[0]["final"] == results["final_eval"]
    with pytest.raises(AttnSwapError, match="not a finished recipe run"):
        compare_runs([out / "checkpoints"])


def test_resume_after_interruption_gives_the_same_weights(assets, tmp_path):
    """Dropout is on: the data position and every random state must be restored exactly."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(_argv(assets, full, "--checkpointing_steps", "2")) == 0
    assert _run(_argv(assets, cut, "--checkpointing_steps", "2", "--stop_after_steps", "3")) == 0
    assert not (cut / "model.safetensors").exists()
    assert _run(_argv(assets, cut, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")) == 0
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    results = json.loads((cut / "results.json").read_text())
    assert results["evaluations"][0]["step"] == 0, "evaluations from before the interruption are kept"


def test_gradient_accumulation_matches_a_larger_batch(assets, tmp_path):
    # eps >> |g| turns Adam into plain SGD (update ~ lr * g / eps), so float noise in near-zero gradients (e.g. the
    # key bias, which softmax ignores) is not blown up to a full step by Adam's normalisation.
    no_dropout = ["--max_train_steps", "3", "--adam_epsilon", "100", "--learning_rate", "100", "--max_grad_norm", "0"]
    tiny = tmp_path / "nodrop"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("gpt2"), attn_implementation="sdpa").save_pretrained(tiny)
    base = _argv(assets, tmp_path / "a", *no_dropout)
    base[base.index("--model_name_or_path") + 1] = str(tiny)
    accum = [*base, "--tokenizer_name", str(assets / "model")]
    big = [*accum]
    big[big.index("--per_device_train_batch_size") + 1] = "4"
    big[big.index("--gradient_accumulation_steps") + 1] = "1"
    big[big.index("--output_dir") + 1] = str(tmp_path / "b")
    assert _run(accum) == 0 and _run(big) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_parameter_groups_separate_mechanism_and_no_decay():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="dagpam",
                                             attnswap={"lambda_init": 0.1})
    args = TrainArguments(learning_rate=1e-4, attnswap_learning_rate=1e-2, weight_decay=0.1)
    groups = {g["name"]: g for g in parameter_groups(model, args)}
    assert set(groups) == {"decay", "no_decay", "attnswap"}
    assert groups["attnswap"]["lr"] == 1e-2 and groups["attnswap"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert len(groups["attnswap"]["params"]) == 2 * 2  # lambda and W- in each of 2 layers
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_learning_rate_patterns_give_named_weights_their_own_rate():
    """learning_rate_patterns: the first matching pattern decides a weight's group and rate, per decay class; the
    mechanism's parameters keep attnswap_learning_rate; a pattern that matches no trainable weight, or a malformed
    pair, is an error that names it."""
    from hf_attnswap.training.arguments import RecipeConfigError, learning_rate_pairs

    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="dagpam",
                                             attnswap={"lambda_init": 0.1})
    args = TrainArguments(learning_rate=1e-4, attnswap_learning_rate=1e-2, weight_decay=0.1,
                          learning_rate_patterns="q_proj|k_proj=3e-4, layers\\.0\\.=5e-5, norm=1e-3")
    groups = {g["name"]: g for g in parameter_groups(model, args)}
    assert set(groups) == {"decay", "attnswap", "decay:q_proj|k_proj", "decay:layers\\.0\\.",
                           "no_decay:layers\\.0\\.", "no_decay:norm"}  # no_decay: every norm matches a pattern
    names = {id(p): n for n, p in model.named_parameters()}
    in_group = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert in_group["decay:q_proj|k_proj"] == {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1)
                                              for m in "qk"}  # layer 0's q/k match the first pattern first
    assert all(n.startswith("model.layers.0.") for n in in_group["decay:layers\\.0\\."])
    assert in_group["no_decay:norm"] == {"model.layers.1.input_layernorm.weight",
                                         "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"}
    assert not any("attnswap" in n for k, v in in_group.items() if k != "attnswap" for n in v)
    lr = {k: (g["lr"], g["weight_decay"]) for k, g in groups.items()}
    assert lr["decay:q_proj|k_proj"] == (3e-4, 0.1) and lr["no_decay:norm"] == (1e-3, 0.0)
    assert lr["decay:layers\\.0\\."] == (5e-5, 0.1) and lr["attnswap"] == (1e-2, 0.0) and lr["decay"] == (1e-4, 0.1)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    with pytest.raises(RecipeConfigError, match="'no_such' matches no trainable parameter"):
        parameter_groups(model, TrainArguments(learning_rate_patterns="q_proj=1e-3,no_such=1e-3"))
    with pytest.raises(RecipeConfigError, match="'q_proj' matches only weights that an earlier pair already sets"):
        parameter_groups(model, TrainArguments(learning_rate_patterns="proj=1e-3,q_proj=1e-4"))
    for bad, why in (("q_proj", "not REGEX=LR"), ("q_proj=0", "not REGEX=LR"), ("q_proj=fast", "not REGEX=LR"),
                     ("=1e-3", "not REGEX=LR"), ("(=1e-3", "not a regular expression")):
        with pytest.raises(RecipeConfigError, match=why):
            learning_rate_pairs(bad)
    # a comma inside {m,n} or [...], or escaped, belongs to the pattern
    assert learning_rate_pairs(r"layers\.(0|1){1,2}\.=1e-3, [,;]x\,y=2e-4") == [(r"layers\.(0|1){1,2}\.", 1e-3),
                                                                              (r"[,;]x\,y", 2e-4)]


def test_pattern_list_splits_only_between_patterns():
    from hf_attnswap.training.arguments import pattern_list

    assert pattern_list(r" a{1,2}, b[,], c\,d ,, ") == [r"a{1,2}", r"b[,]", r"c\,d"]
    assert pattern_list("q_proj,k_proj") == ["q_proj", "k_proj"] and pattern_list(None) == pattern_list(" , ") == []


def test_lora_trains_adapters_and_mechanism_parameters_and_merged_export_loads(assets, tmp_path):
    out = tmp_path / "lora"
    assert _run(_argv(assets, out, "--lora", "--lora_r", "4", "--lora_target_modules", "c_attn")) == 0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("lambda_param" in k for k in adapter)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.config.attnswap["mechanism"] == "dagpam"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(assets / "model")
    changed = [n for n, p in merged.named_parameters()
               if "attnswap" not in n and not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("c_attn" in n for n in changed) and not any("mlp" in n for n in changed)
    lam = [float(p.detach().mean()) for n, p in merged.named_parameters() if n.endswith("lambda_param")]
    assert any(abs(v - 0.1) > 1e-4 for v in lam)
    # the adapter records its mechanism: load_adapter rebuilds the swapped base and gives the merged model's logits
    assert json.loads((out / "adapter" / "attnswap.json").read_text())["attn_implementation"] == "dagpam"
    ids = torch.tensor([[5, 6, 7, 8]])
    reloaded = hf_attnswap.load_adapter(str(assets / "model"), out / "adapter").eval()
    torch.testing.assert_close(reloaded(ids).logits, merged.eval()(ids).logits, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_and_bf16_run(assets, tmp_path, monkeypatch):
    assert _run(_argv(assets, tmp_path / "gc", "--gradient_checkpointing", "--max_train_steps", "2")) == 0
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)  # runs (slowly) on a CPU without bf16 kernels too
    assert _run(_argv(assets, tmp_path / "bf16", "--mixed_precision", "bf16", "--max_train_steps", "2")) == 0
    for run in ("gc", "bf16"):
        loss = [json.loads(x)["loss"] for x in (tmp_path / run / "log.jsonl").read_text().splitlines() if '"loss"' in x]
        assert len(loss) == 2 and all(torch.isfinite(torch.tensor(loss)))


def test_from_scratch_with_config_overrides(assets, tmp_path):
    out = tmp_path / "scratch"
    argv = _argv(assets, out, "--max_train_steps", "2")
    i = argv.index("--model_name_or_path")
    argv[i:i + 2] = ["--model_type", "llama", "--tokenizer_name", str(assets / "model"), "--config_overrides",
                     "hidden_size=32,intermediate_size=64,num_hidden_layers=2,num_attention_heads=4,"
                     "num_key_value_heads=2,max_position_embeddings=64"]
    assert _run(argv) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert model.config.vocab_size >= len(WORDS)


def test_yaml_config_with_command_line_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: x\nattn: dagpam\nblock_size: 64\nlearning_rate: 1.0e-4\n")
    model, data, train = parse_recipe_args([ModelArguments, DataArguments, TrainArguments],
                                           ["--config", str(cfg), "--block_size", "32"])
    assert model.attn == "dagpam" and data.block_size == 32 and train.learning_rate == 1e-4
    cfg.write_text("model_name_or_path: x\nblok_size: 64\n")
    with pytest.raises(RecipeConfigError, match="blok_size"):
        parse_recipe_args([ModelArguments, DataArguments, TrainArguments], ["--config", str(cfg)])


@pytest.mark.parametrize("case", ["missing_file", "missing_column", "block_size", "empty", "resume", "unknown_attn",
                                  "existing_checkpoints", "fp16_cpu"])
def test_bad_input_fails_early_with_a_clear_message(assets, tmp_path, capsys, case):
    out = tmp_path / "bad"
    argv = _argv(assets, out)
    expect = {
        "missing_file": "file not found", "missing_column": "no column 'body'", "block_size": "larger than the model's 64",
        "empty": "contains no text", "resume": "not a checkpoint", "unknown_attn": "unknown", "existing_checkpoints":
        "already holds checkpoints", "fp16_cpu": "fp16 needs a CUDA GPU",
    }[case]
    if case == "missing_file":
        argv[argv.index("--train_file") + 1] = str(tmp_path / "nope.jsonl")
    elif case == "missing_column":
        argv += ["--text_column", "body"]
    elif case == "block_size":
        argv[argv.index("--block_size") + 1] = "128"
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n{"text": ""}\n')
        argv[argv.index("--train_file") + 1] = str(tmp_path / "empty.jsonl")
    elif case == "resume":
        (tmp_path / "not_ckpt").mkdir()
        argv += ["--resume_from_checkpoint", str(tmp_path / "not_ckpt")]
    elif case == "unknown_attn":
        argv[argv.index("--attn") + 1] = "dagpamm"
    elif case == "existing_checkpoints":
        assert _run(_argv(assets, out, "--max_train_steps", "1", "--checkpointing_steps", "1")) == 0
        capsys.readouterr()
    elif case == "fp16_cpu":
        argv += ["--mixed_precision", "fp16"]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in "\n" + err and expect in err and "Traceback" not in err


def test_ctrl_c_leaves_the_last_checkpoint_intact_and_resumable(assets, tmp_path):
    """A real SIGINT to a running recipe, sent as soon as it reports its first checkpoint."""
    out = tmp_path / "sigint"
    argv = _argv(assets, out, "--max_train_steps", "400", "--checkpointing_steps", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(RECIPE), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT,
                            # a shell's background job inherits SIGINT ignored, and Python then never raises
                            # KeyboardInterrupt: give the child the default disposition, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("saved checkpoint"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted at step" in rest and "Traceback" not in rest
    done = sorted((out / "checkpoints").glob("step_*"))
    assert done and all((d / "recipe_state.json").is_file() for d in done)
    assert _run([*argv[:-2], "--output_dir", str(out), "--resume_from_checkpoint", "latest", "--max_train_steps", "400",
                 "--stop_after_steps", "1"]) == 0


def test_push_to_hub_after_training(assets, tmp_path, monkeypatch):
    import huggingface_hub

    from _hub_server import LocalHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the loopback hub is reachable
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    token = "hf_recipeFAKEtoken"
    monkeypatch.setenv("HF_TOKEN", token)
    with LocalHub(token=token) as hub:
        out = tmp_path / "push"
        assert _run(_argv(assets, out, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "alice/tiny-cp",
                          "--hub_endpoint", hub.endpoint)) == 0
        commit = hub.last_commit("alice/tiny-cp")
        assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(commit.files)
        assert b"dagpam" in commit.files["README.md"]
