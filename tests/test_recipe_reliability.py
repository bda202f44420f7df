"""Recipe reliability (issue #16): non-finite losses, finished output folders, inexact or damaged resumes, bad
arguments, SIGTERM. Tiny GPT-2 and word-level tokenizer built here; runs in-process except where a real signal or a
2-process launch is the point."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from hf_attnswap.training.arguments import (DataArguments, ModelArguments, RecipeConfigError, TrainArguments,
                                            parse_recipe_args)
from hf_attnswap.training.loop import run_recipe

from conftest import tiny_config, word_documents, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "continue_pretrain.py"
MT_RECIPE = ROOT / "recipes" / "finetune_translation.py"
CPU_CONFIG = ROOT / "recipes" / "configs" / "accelerate" / "cpu.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load(RECIPE, "continue_pretrain_reliability")
mt_recipe = _load(MT_RECIPE, "finetune_translation_reliability")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A word-level tokenizer and a tiny GPT-2 (dropout on) in one folder, and 40 documents of those words."""
    root = tmp_path_factory.mktemp("reliability_assets")
    tok = word_tokenizer()
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    cfg = tiny_config("gpt2", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    docs = word_documents(40, (10, 40), g)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def _argv(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(assets / "model"), "--attn", "dagpam:lambda_init=0.1",
            "--train_file", str(assets / "train.jsonl"), "--validation_split_percentage", "10",
            "--block_size", "16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--max_train_steps", "4", "--learning_rate", "1e-3", "--disable_progress_bar", "--output_dir", str(out),
            *extra]


def _run(argv: list[str], module=recipe) -> int:
    AcceleratorState._reset_state(True)
    return run_recipe(lambda: module.main(argv))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for t in _weights(folder).values())


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*"))


# ---------------------------------------------------------------------------------------------------------------------
# 1. non-finite loss / gradient norm / weights


def test_nan_loss_stops_with_an_error_and_keeps_the_last_finite_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "nan"
    rc = _run(_argv(assets, out, "--learning_rate", "1e6", "--max_grad_norm", "0", "--checkpointing_steps", "1",
                    "--checkpoints_total_limit", "2", "--max_train_steps", "8"))
    text = capsys.readouterr()
    assert rc == 1, text.out + text.err
    err = text.err
    assert "error: " in err and "Traceback" not in err
    bad = [r for r in _log(out) if r.get("event") == "non_finite"]
    assert len(bad) == 1
    step = bad[0]["step"]
    assert f"step {step}" in err and "--resume_from_checkpoint" in err and "--learning_rate" in err
    trained = [r for r in _log(out) if "loss" in r and "event" not in r]
    assert trained and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in trained)
    assert [r["step"] for r in trained] == list(range(1, step))
    done = _checkpoints(out)
    assert done and done[-1].name == f"step_{step - 1:08d}" and done[-1].name in err
    assert all(_finite(d) for d in done), "no checkpoint holds non-finite weights"
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()


def test_non_finite_weights_are_never_checkpointed(assets, tmp_path, monkeypatch, capsys):
    """An update that makes the weights non-finite while the step's loss and gradient norm were finite."""
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "inf"
    rc = _run(_argv(assets, out, "--checkpointing_steps", "1"))
    err = capsys.readouterr().err
    assert rc == 1 and "after step 1" in err and "weights are not finite" in err, err
    assert not _checkpoints(out) and not (out / "model.safetensors").exists()


def _inject_nan(monkeypatch, steps: set[int], accumulation: int = 2) -> None:
    """Make the training loss NaN in the given optimiser steps (counting training forward passes)."""
    original = GPT2LMHeadModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training and kwargs.get("labels") is not None:
            calls["n"] += 1
            if (calls["n"] - 1) // accumulation + 1 in steps:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GPT2LMHeadModel, "forward", forward)


def test_max_bad_steps_skips_a_bounded_number_of_non_finite_steps(assets, tmp_path, monkeypatch, capsys):
    _inject_nan(monkeypatch, {2})
    out = tmp_path / "skip"
    assert _run(_argv(assets, out, "--max_bad_steps", "1", "--eval_before_training", "false")) == 0
    assert _finite(out), "the NaN gradients never reached the weights"
    skips = [r for r in _log(out) if r.get("event") == "skipped_step"]
    assert [r["step"] for r in skips] == [2]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4 and [s["step"] for s in results["skipped_steps"]] == [2]


def test_more_bad_steps_than_allowed_stop_the_run(assets, tmp_path, monkeypatch, capsys):
    _inject_nan(monkeypatch, {2, 3})
    out = tmp_path / "too_many"
    assert _run(_argv(assets, out, "--max_bad_steps", "1", "--eval_before_training", "false")) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "step 3" in err and "max_bad_steps" in err
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()


def test_resume_with_a_lower_learning_rate_uses_it(assets, tmp_path):
    """The advice after a NaN (resume with a lower learning rate) must work: the checkpoint's schedule keeps its
    shape, scaled to the new peak."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(_argv(assets, full, "--eval_before_training", "false")) == 0
    assert _run(_argv(assets, cut, "--checkpointing_steps", "2", "--stop_after_steps", "2",
                      "--eval_before_training", "false")) == 0
    argv = _argv(assets, cut, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    argv[argv.index("--learning_rate") + 1] = "5e-4"
    assert _run(argv) == 0
    lr_full = {r["step"]: r["lr/decay"] for r in _log(full) if "loss" in r}
    lr_cut = {r["step"]: r["lr/decay"] for r in _log(cut) if "loss" in r}
    for s in (3, 4):
        assert lr_cut[s] == pytest.approx(lr_full[s] / 2, rel=1e-9)


@pytest.mark.skipif(os.environ.get("ATTNSWAP_SKIP_SLOW") == "1", reason="2-process launch")
def test_nan_under_two_processes_stops_every_process(assets, tmp_path):
    out = tmp_path / "ddp_nan"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG), str(RECIPE),
           *_argv(assets, out, "--learning_rate", "1e6", "--max_grad_norm", "0", "--checkpointing_steps", "1",
                  "--per_device_train_batch_size", "1", "--max_train_steps", "8", "--eval_before_training", "false")]
    env = {k: v for k, v in ENV.items() if not k.startswith(("ACCELERATE_", "FSDP_"))
           and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "ACCELERATE_USE_CPU": "1"}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode != 0, proc.stdout[-4000:]
    steps = re.findall(r"error: step (\d+): the loss is nan", proc.stdout)  # every process, the same step
    assert len(steps) == 2 and len(set(steps)) == 1, proc.stdout[-4000:]
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()
    assert all(_finite(d) for d in _checkpoints(out))


# ---------------------------------------------------------------------------------------------------------------------
# 3. a finished output_dir


def test_second_run_into_a_finished_output_dir_is_refused_unless_overwrite(assets, tmp_path, capsys):
    out = tmp_path / "done"
    argv = _argv(assets, out, "--max_train_steps", "2")
    assert _run(argv) == 0
    before = (out / "results.json").read_text(), (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "--overwrite_output_dir" in err and "Traceback" not in err
    assert ((out / "results.json").read_text(), (out / "model.safetensors").read_bytes()) == before
    typo = [*argv, "--overwrite_output_dir", "--train_file", str(tmp_path / "typo.jsonl")]
    assert _run(typo) == 2 and "typo.jsonl" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before[0], "nothing is deleted before the data and model loaded"
    assert _run([*argv, "--overwrite_output_dir"]) == 0
    steps = [r["step"] for r in _log(out) if "loss" in r]
    assert steps == [1, 2], "the old run's log was cleared, not appended to"


def test_a_log_left_by_a_failed_run_is_not_appended_to(assets, tmp_path, capsys):
    out = tmp_path / "failed"
    assert _run(_argv(assets, out, "--learning_rate", "1e6", "--max_grad_norm", "0")) == 1
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert _run(_argv(assets, out, "--max_train_steps", "1")) == 2
    assert "log.jsonl of an earlier run" in capsys.readouterr().err
    assert _run(_argv(assets, out, "--max_train_steps", "1", "--overwrite_output_dir")) == 0
    assert not [r for r in _log(out) if r.get("event") == "non_finite"]


@pytest.mark.parametrize("marker", ["results.json", "model.safetensors"])
def test_finished_output_dir_is_checked_before_data_and_model(assets, tmp_path, capsys, marker):
    out = tmp_path / "done"
    out.mkdir()
    (out / marker).write_text("{}")
    argv = _argv(assets, out)
    argv[argv.index("--train_file") + 1] = str(tmp_path / "never_read.jsonl")
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and marker in err


def test_translation_recipe_refuses_a_finished_output_dir_before_loading(assets, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "results.json").write_text("{}")
    argv = ["--model_type", "gpt2", "--tokenizer_name", str(assets / "model"), "--dataset_name",
            str(tmp_path / "no_data"), "--output_dir", str(out), "--disable_progress_bar"]
    assert _run(argv, mt_recipe) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "results.json" in err


def test_resume_into_a_finished_run_continues_it_but_not_from_a_foreign_checkpoint(assets, tmp_path, capsys):
    out, other = tmp_path / "done", tmp_path / "other"
    argv = _argv(assets, out, "--max_train_steps", "2", "--checkpointing_steps", "2")
    assert _run(argv) == 0 and _run(_argv(assets, other, "--max_train_steps", "2", "--checkpointing_steps", "2")) == 0
    capsys.readouterr()
    more = [*argv, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
    assert _run(more) == 0
    assert "resuming the finished run" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["steps"] == 3
    foreign = [*argv, "--resume_from_checkpoint", str(other / "checkpoints" / "step_00000002")]
    assert _run(foreign) == 2
    assert "not one of its checkpoints" in capsys.readouterr().err
    assert _run([*foreign, "--overwrite_output_dir"]) == 0


def test_resume_with_other_trained_parameters_is_refused_by_name(assets, ckpt_run, tmp_path, capsys):
    """A resume whose optimiser groups differ from the checkpoint's (here: learning_rate_patterns added) is an error
    that says so, not a 'corrupt checkpoint'; with the run's own settings it resumes."""
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    argv = _argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false",
                 "--resume_from_checkpoint", str(out / "checkpoints" / "step_00000002"))
    assert _run([*argv, "--learning_rate_patterns", "c_attn=1e-2"]) == 2
    err = capsys.readouterr().err
    assert "trained other parameters" in err and "learning_rate_patterns" in err and "corrupt" not in err
    assert _run(argv) == 0


# ---------------------------------------------------------------------------------------------------------------------
# 5 and 9. resuming from incomplete, damaged or foreign checkpoints


@pytest.fixture(scope="module")
def ckpt_run(assets, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert _run(_argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false")) == 0
    return out


def _copy_checkpoints(ckpt_run: Path, dest: Path) -> Path:
    shutil.copytree(ckpt_run / "checkpoints", dest / "checkpoints")
    return dest


def test_resume_without_random_states_is_refused_unless_allowed(assets, ckpt_run, tmp_path, capsys):
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    ckpt = out / "checkpoints" / "step_00000002"
    (ckpt / "random_states_0.pkl").unlink()
    argv = _argv(assets, out, "--checkpointing_steps", "2", "--resume_from_checkpoint", str(ckpt),
                 "--eval_before_training", "false")
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "random_states_0.pkl" in err and "--allow_inexact_resume" in err
    assert _run([*argv, "--allow_inexact_resume"]) == 0
    captured = capsys.readouterr()
    assert "inexact" in (captured.out + captured.err).lower()
    results = json.loads((out / "results.json").read_text())
    assert results["inexact_resume"] and "random_states_0.pkl" in results["inexact_resume"][0]


def test_resume_with_another_number_of_processes_is_refused(assets, ckpt_run, tmp_path, capsys):
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    ckpt = out / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "recipe_state.json").read_text())
    assert state["world_size"] == 1
    state["world_size"] = 2
    (ckpt / "recipe_state.json").write_text(json.dumps(state))
    argv = _argv(assets, out, "--resume_from_checkpoint", str(ckpt))
    assert _run(argv) == 2
    assert "random_states_1.pkl" in capsys.readouterr().err
    shutil.copy(ckpt / "random_states_0.pkl", ckpt / "random_states_1.pkl")
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "2 processes" in err and "1 process" in err and "--allow_inexact_resume" in err


def test_a_checkpoint_without_manifest_or_world_size_still_resumes(assets, ckpt_run, tmp_path):
    """Checkpoints written before recipe_state.json carried them."""
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    ckpt = out / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "recipe_state.json").read_text())
    del state["files"], state["world_size"]
    (ckpt / "recipe_state.json").write_text(json.dumps(state))
    assert _run(_argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false",
                      "--resume_from_checkpoint", str(ckpt))) == 0
    a, b = _weights(out), load_file(ckpt_run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "still bit-identical"


def test_resume_command_replaces_resume_and_overwrite_flags():
    from hf_attnswap.training.loop import resume_command

    command = ["python", "recipes/continue_pretrain.py", "--config", "c.yaml", "--overwrite_output_dir", "--seed", "1",
               "--resume_from_checkpoint=latest", "--learning_rate", "1e-3", "--overwrite_output_dir", "true"]
    assert shlex.split(resume_command(command, "out/checkpoints/step_00000002", learning_rate="0.0001")) == [
        "python", "recipes/continue_pretrain.py", "--config", "c.yaml", "--seed", "1", "--learning_rate", "0.0001",
        "--resume_from_checkpoint", "out/checkpoints/step_00000002"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "truncated_model": lambda c: _truncate(c / "model.safetensors"),
    "deleted_model": lambda c: (c / "model.safetensors").unlink(),
    "truncated_optimizer": lambda c: _truncate(c / "optimizer.bin"),
    "truncated_state": lambda c: _truncate(c / "recipe_state.json"),
    "deleted_state": lambda c: (c / "recipe_state.json").unlink(),
    "deleted_scheduler": lambda c: (c / "custom_checkpoint_0.pkl").unlink(),
    "garbled_state": lambda c: (c / "recipe_state.json").write_text('{"step": 4}'),
    "garbage_state": lambda c: (c / "recipe_state.json").write_text("\x00\x01 not json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_latest_skips_it(assets, ckpt_run, tmp_path, capsys, damage):
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    newest = out / "checkpoints" / "step_00000004"
    DAMAGE[damage](newest)
    argv = _argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false")
    assert _run([*argv, "--resume_from_checkpoint", str(newest)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "step_00000004 is incomplete or corrupt" in err, err
    assert "resume from" in err and "step_00000002" in err
    assert _run([*argv, "--resume_from_checkpoint", "latest"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "skipping" in text and "step_00000004" in text and "resumed from" in text and "step_00000002" in text
    assert _finite(out) and json.loads((out / "results.json").read_text())["steps"] == 4


def test_a_damaged_only_checkpoint_says_there_is_none_to_resume_from(assets, ckpt_run, tmp_path, capsys):
    out = _copy_checkpoints(ckpt_run, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "step_00000002")
    _truncate(out / "checkpoints" / "step_00000004" / "model.safetensors")
    assert _run(_argv(assets, out, "--resume_from_checkpoint", "latest")) == 2
    err = capsys.readouterr().err
    assert "step_00000004" in err and "no intact checkpoint" in err


# ---------------------------------------------------------------------------------------------------------------------
# 11. arguments


@pytest.mark.parametrize("flag,value", [("learning_rate", "nan"), ("learning_rate", "inf"), ("weight_decay", "nan"),
                                        ("max_grad_norm", "nan"), ("attnswap_learning_rate", "nan"),
                                        ("adam_epsilon", "inf"), ("validation_split_percentage", "nan"),
                                        ("learning_rate", "1e39")])
def test_non_finite_float_arguments_are_refused(flag, value):
    with pytest.raises(RecipeConfigError, match=flag):
        parse_recipe_args([ModelArguments, DataArguments, TrainArguments],
                          ["--model_name_or_path", "x", f"--{flag}", value])


def _scratch(assets: Path, out: Path, overrides: str, model_type: str = "gpt2") -> list[str]:
    argv = _argv(assets, out)
    i = argv.index("--model_name_or_path")
    argv[i:i + 2] = ["--model_type", model_type, "--tokenizer_name", str(assets / "model"),
                     "--config_overrides", overrides]
    argv[argv.index("--train_file") + 1] = str(out.parent / "not_read.jsonl")  # the checks come before the data
    return argv


@pytest.mark.parametrize("overrides,expect", [
    ("n_layer=1,n_embd=65,n_head=2", "config_overrides"),
    ("n_layer", "key=value,key=value"),
    ("n_layer=1,,n_head", "key=value,key=value"),
    ("n_layr=1", "did you mean 'n_layer'"),
    ("n_layer=two", "n_layer"),
])
def test_bad_config_overrides_are_clear_errors(assets, tmp_path, capsys, overrides, expect):
    assert _run(_scratch(assets, tmp_path / "run", overrides)) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err
    if "65" in overrides:
        assert "n_embd=65" in err or "n_embd" in err


def test_config_overrides_strip_spaces():
    from hf_attnswap.training.model import build_config

    config = build_config(ModelArguments(model_type="gpt2", config_overrides=" n_layer = 1 , n_embd=64 ,n_head=2 "))
    assert (config.n_layer, config.n_embd, config.n_head) == (1, 64, 2)


def test_model_type_typo_suggests_the_close_name(assets, tmp_path, capsys):
    assert _run(_scratch(assets, tmp_path / "run", "n_layer=1", model_type="gtp2")) == 2
    err = capsys.readouterr().err
    assert "unknown model_type 'gtp2'; did you mean 'gpt2'?" in err and len(err) < 600, err


@pytest.mark.parametrize("flag", ["--tokenizer_name", "--model_name_or_path", "--config_name"])
def test_a_local_path_that_does_not_exist_is_reported_as_such(assets, tmp_path, capsys, flag):
    argv = _argv(assets, tmp_path / "run")
    argv[argv.index("--train_file") + 1] = str(tmp_path / "not_read.jsonl")
    missing = str(tmp_path / "no" / "such_folder")
    if flag == "--model_name_or_path":
        argv[argv.index(flag) + 1] = missing
    elif flag == "--config_name":
        i = argv.index("--model_name_or_path")
        argv[i:i + 2] = ["--config_name", missing, "--tokenizer_name", str(assets / "model")]
    else:
        argv += [flag, missing]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Repo id" not in err and "such_folder" in err, err


def test_a_yaml_value_can_be_unset_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: x\ndataset_name: news-text\neval_steps: 5\nmax_train_steps: 9\n"
                   "attnswap_learning_rate: 0.1\n")
    types = [ModelArguments, DataArguments, TrainArguments]
    _, data, train = parse_recipe_args(types, ["--config", str(cfg)])
    assert (data.dataset_name, train.eval_steps) == ("news-text", 5)
    _, data, train = parse_recipe_args(types, ["--config", str(cfg), "--eval_steps", "none", "--dataset_name", "",
                                               "--max-train-steps=null", "--attnswap_learning_rate", "None"])
    assert (data.dataset_name, train.eval_steps, train.max_train_steps, train.attnswap_learning_rate) == (
        None, None, None, None)
    _, data, _ = parse_recipe_args(types, ["--config", str(cfg), "--dataset_name", "none", "--train_file", "a.txt"])
    assert data.dataset_name is None and data.train_file == "a.txt"
    with pytest.raises(SystemExit):
        parse_recipe_args(types, ["--help"])
    assert "none" in capsys.readouterr().out.lower()


def test_from_scratch_settings_with_a_pretrained_model_are_named_as_ignored_and_can_be_unset(assets, tmp_path,
                                                                                            capsys):
    from hf_attnswap.training.model import check_model_args

    cfg = tmp_path / "scratch.yaml"
    cfg.write_text("model_type: gpt2\nconfig_overrides: n_layer=2\n")
    types = [ModelArguments, DataArguments, TrainArguments]
    model, _, _ = parse_recipe_args(types, ["--config", str(cfg), "--model_name_or_path", str(assets / "model")])
    check_model_args(model)
    assert "model_type='gpt2', config_overrides='n_layer=2'" in capsys.readouterr().err
    model, _, _ = parse_recipe_args(types, ["--config", str(cfg), "--model_name_or_path", str(assets / "model"),
                                            "--model_type", "none", "--config_overrides", "none"])
    check_model_args(model)
    assert (model.model_type, model.config_overrides) == (None, None) and "ignored" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# SIGTERM (what schedulers send) behaves like Ctrl-C


def test_sigterm_stops_cleanly_and_prints_a_resume_command_that_works(assets, tmp_path):
    out = tmp_path / "sigterm"
    argv = _argv(assets, out, "--max_train_steps", "400", "--checkpointing_steps", "2")
    proc = subprocess.Popen([sys.executable, str(RECIPE), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("saved checkpoint"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, "".join(lines) + rest
    assert "interrupted at step" in rest and "SIGTERM" in rest and "Traceback" not in rest
    done = _checkpoints(out)
    assert done and all((d / "recipe_state.json").is_file() for d in done)
    command = next(line for line in rest.splitlines() if line.strip().startswith("resume with:"))
    words = shlex.split(command.split("resume with:", 1)[1])
    assert words[1].endswith("continue_pretrain.py") and "--resume_from_checkpoint" in words
    ckpt = words[words.index("--resume_from_checkpoint") + 1]
    assert Path(ckpt).parent == out / "checkpoints" and Path(ckpt) in done
    assert _run([*words[2:], "--stop_after_steps", "1"]) == 0


def test_a_signal_while_a_checkpoint_is_renamed_into_place_waits_for_it(assets, tmp_path, monkeypatch):
    """SIGTERM arrives between removing an older copy of the step's checkpoint and renaming the new one into place
    (sent from inside os.replace, so no timing is involved): the checkpoint is completed first."""
    import hf_attnswap.training.checkpoint as checkpoint_module

    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "step_00000002":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    out = tmp_path / "run"
    assert _run(_argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false")) == 143
    assert [d.name for d in _checkpoints(out)] == ["step_00000002"]
    monkeypatch.setattr(checkpoint_module.os, "replace", real)
    assert _run(_argv(assets, out, "--checkpointing_steps", "2", "--eval_before_training", "false",
                      "--resume_from_checkpoint", "latest")) == 0


def test_data_messages_name_the_recipe_flags(tmp_path, capsys):
    """The shared loaders' hints name --text_column (the recipes' flag), not the Python keyword text_column=."""
    from hf_attnswap.data.text import load_texts
    from hf_attnswap.training.loop import run_recipe

    data = tmp_path / "d.jsonl"
    data.write_text('{"body": "some words here"}\n')
    assert run_recipe(lambda: load_texts(str(data), text_column="text")) == 2
    err = capsys.readouterr().err
    assert "--text_column" in err and "text_column=" not in err


def test_signals_are_deferred_even_when_another_thread_receives_them():
    """A process-directed SIGTERM may go to any thread that does not block it (a tokenizer's, torch's); Python still
    runs the handler in the main thread. The checkpoint rename must not be interrupted either way."""
    import threading

    from hf_attnswap.training.checkpoint import _signals_deferred

    caught = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: caught.append("handler"))
    release = threading.Event()
    helper = threading.Thread(target=release.wait, daemon=True)
    helper.start()
    try:
        with _signals_deferred():
            signal.pthread_kill(helper.ident, signal.SIGTERM)  # as the kernel may pick it
            for _ in range(3_000_000):  # the main thread runs bytecode while the signal is pending
                pass
            inside = list(caught)
        after = list(caught)
    finally:
        release.set()
        helper.join()
        signal.signal(signal.SIGTERM, previous)
    assert inside == [] and after == ["handler"]
