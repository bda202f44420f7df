"""benchmarks/reproduction/jobs.py: the plan of the claims' jobs, the cache of finished steps and the runner, with
tiny ``python -c`` steps instead of training runs."""

from __future__ import annotations

import json
import os
import sys

import pytest

import _reproduction  # noqa: F401  (benchmarks/ on the path)
from reproduction import config, jobs


def _names(claims, seeds=(0, 1), scale=config.QUICK, tmp_path=None, parts=frozenset()):
    return [j.name for j in jobs.plan(set(claims), list(seeds), scale, tmp_path, parts)]


def test_plan_per_claim(tmp_path):
    assert _names({1}, tmp_path=tmp_path) == ["claim1 seed 0", "claim1 seed 1"]
    assert _names({2}, tmp_path=tmp_path) == ["scratch softmax seed 0", "scratch softmax seed 1",
                                              "scratch dagpam seed 0", "scratch dagpam seed 1"]
    assert _names({3}, seeds=[0], tmp_path=tmp_path) == ["scratch softmax seed 0", "scratch poly_scaled seed 0",
                                                         "scratch poly_unscaled seed 0", "scratch poly_p1 seed 0"]
    assert _names({5}, seeds=[0], tmp_path=tmp_path) == ["scratch softmax seed 0", "scratch dagpam seed 0",
                                                         "scratch poly_scaled seed 0"]
    assert _names({4}, seeds=[0, 2], tmp_path=tmp_path) == ["claim4 sdpa baseline", "claim4 smollm2 polynomial seed 0",
                                                            "claim4 smollm2 polynomial seed 2"]
    assert _names(set(), seeds=[0], tmp_path=tmp_path, parts={"cpt", "mt"}) == [
        "cpt base", "cpt softmax seed 0", "cpt dagpam seed 0", "mt base", "mt softmax seed 0", "mt dagpam seed 0"]
    every = _names({1, 2, 3, 4, 5}, seeds=[0, 1, 2], tmp_path=tmp_path, parts={"cpt", "mt"})
    # each run once, shared by the claims that use it
    assert len(every) == len(set(every)) == 1 + 3 + 5 * 3 + 3 + 2 * (1 + 2 * 3)


def test_plan_steps_probes_and_folders(tmp_path):
    inputs = jobs.Inputs(tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "tok-abc")
    by_name = {j.name: j for j in jobs.plan({2, 3}, [1], config.FULL, tmp_path, inputs=inputs)}
    soft = by_name["scratch softmax seed 1"]
    train, probe = soft.steps
    assert train.folder == jobs.scratch_run_dir(tmp_path, "softmax", 1) == tmp_path / "scratch" / "softmax_seed1"
    assert train.done == train.folder / "results.json" and train.cleanup == [train.folder / "checkpoints"]
    assert train.fresh and not probe.fresh  # a stale recipe folder is removed; a probe folder is not
    assert train.argv[1:4] == ["recipes/continue_pretrain.py", "--config", "recipes/configs/gpt2_scratch_wiki.yaml"]
    value = lambda argv, flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert value(train.argv, "--seed") == "1" and value(train.argv, "--output_dir") == str(train.folder)
    assert value(train.argv, "--max_train_steps") == str(config.FULL.gpt2_steps)
    assert value(train.argv, "--tokenizer_name") == str(inputs.tokenizer)  # the trained vocabulary, and its size
    assert value(train.argv, "--config_overrides").endswith(f",vocab_size={config.FULL.vocab_size}")
    assert (value(train.argv, "--train_file"), value(train.argv, "--validation_file")) == (
        str(inputs.train_file), str(inputs.validation_file))
    assert "--max_eval_samples" not in train.argv  # FULL evaluates on every validation document
    assert probe.argv[1:4] == ["benchmarks/reproduce.py", "--job", "probe"]
    assert json.loads(probe.argv[5]) == {"model": str(train.folder), "out": str(probe.done), "scale": "full",
                                         "texts": str(inputs.validation_file)}
    assert probe.done == train.folder / "probe" / "probe.json"
    unscaled = by_name["scratch poly_unscaled seed 1"].steps[0].argv
    assert value(unscaled, "--attn") == 'polynomial:degree=3:length_scale="none"'
    assert value(by_name["scratch poly_p1 seed 1"].steps[0].argv, "--attn") == "polynomial:degree=1"
    assert [j.weight for j in by_name.values()] == [6] * 5
    quick = jobs.plan({4}, [0], config.QUICK, tmp_path)
    (smol_step,) = quick[1].steps
    assert smol_step.argv[smol_step.argv.index("--max_eval_samples") + 1] == str(config.QUICK.smol_max_eval_samples)
    assert smol_step.cleanup == [smol_step.folder / "checkpoints", smol_step.folder / "model.safetensors"]
    assert (quick[0].weight, quick[1].weight) == (3, 7)


def test_plan_of_the_smollm2_parts(tmp_path):
    inputs = jobs.Inputs(tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "tok")
    by_name = {j.name: j for j in jobs.plan(set(), [2], config.FULL, tmp_path, {"cpt", "mt"}, inputs)}
    value = lambda argv, flag: argv[argv.index(flag) + 1]  # noqa: E731
    soft, dag = by_name["cpt softmax seed 2"].steps, by_name["cpt dagpam seed 2"].steps
    assert value(soft[0].argv, "--attn") == "softmax" and value(dag[0].argv, "--attn") == "dagpam:lambda_init=0.0"
    same = [a for a in soft[0].argv if a not in ("softmax", "dagpam:lambda_init=0.0")]
    assert [a for a in dag[0].argv if a not in ("softmax", "dagpam:lambda_init=0.0")][:len(same)] == [
        a.replace("softmax_seed", "dagpam_seed") for a in same]  # the same data, steps and seed
    assert value(dag[0].argv, "--train_file") == str(inputs.train_file) and "--attnswap_learning_rate" in dag[0].argv
    assert soft[1].cleanup == [soft[0].folder / "model.safetensors"]  # the weights go once the news ppl is measured
    assert json.loads(soft[1].argv[5])["wiki"] is None and json.loads(by_name["cpt base"].steps[0].argv[5])["wiki"]
    mt = by_name["mt dagpam seed 2"].steps
    assert mt[0].argv[1:4] == ["recipes/finetune_translation.py", "--config",
                               "recipes/configs/smollm2_translation_dagpam.yaml"]
    assert value(mt[0].argv, "--max_train_steps") == str(config.FULL.mt_steps)
    assert mt[1].argv[3] == "mt_test" and mt[1].cleanup == [mt[0].folder / "model.safetensors", mt[0].folder / "best"]


def test_self_argv_is_stable():
    a = jobs.self_argv("claim1", seed=0, scale="quick", out="x.json")
    assert a == jobs.self_argv("claim1", out="x.json", scale="quick", seed=0)  # keyword order does not matter
    assert a == [sys.executable, "benchmarks/reproduce.py", "--job", "claim1", "--job-args",
                 '{"out": "x.json", "scale": "quick", "seed": 0}']


def test_example_commands_and_shell_words():
    cmds = jobs.example_commands(config.QUICK, "runs/reproduce_quick")
    assert len(cmds) == len(config.MECHS) + 1 + 2 + 2
    assert all(c.startswith("python recipes/") for c in cmds)
    assert all("--seed <seed>" in c and "seed<seed>" in c and "--seed 0" not in c for c in cmds)
    assert "--attn 'polynomial:degree=3:length_scale=\"none\"'" in cmds[3]
    assert cmds[len(config.MECHS)].endswith("--output_dir runs/reproduce_quick/smollm2_polynomial/seed<seed> "
                                            "--overwrite_output_dir true --max_eval_samples 1")
    assert cmds[-1].startswith("python recipes/finetune_translation.py")
    assert len(jobs.example_commands(config.QUICK, "runs/x", parts=set())) == len(config.MECHS) + 1
    assert jobs.shell_word("<seed>") == "<seed>" and jobs.shell_word("a b") == "'a b'"
    assert jobs.shell_word("runs/x_seed<seed>") == "runs/x_seed<seed>"


def test_job_env_is_single_threaded_and_offline():
    env = jobs.job_env()
    assert env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["MPLBACKEND"] == "Agg"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(config.REPO)


def _step(runs, name, code, *, fresh=True, cleanup=()):
    """A step that runs ``code`` (``{done}`` and ``{folder}`` filled in) in a fresh Python."""
    folder = runs / name
    done = folder / "done.json"
    argv = [sys.executable, "-c", code.format(done=done, folder=folder)]
    return jobs.Step(argv, folder, done, cleanup=[folder / c for c in cleanup], fresh=fresh)


WRITE = "import pathlib; pathlib.Path(r'{folder}/ckpt').mkdir(); pathlib.Path(r'{done}').write_text('{{}}'); print('hi')"


def test_step_runs_once_then_is_cached(tmp_path):
    runner = jobs.Runner(tmp_path, 1)
    step = _step(tmp_path, "a", WRITE, cleanup=["ckpt"])
    assert not step.cached()
    ok, seconds, cached = runner.run_step(step)
    assert ok and not cached and seconds > 0
    stamp = json.loads(step.stamp.read_text())
    assert stamp["argv"] == step.argv and stamp["rc"] == 0 and stamp["ok"] and "started" in stamp
    assert (step.folder / "reproduce_stdout.log").read_text().strip() == "hi"
    assert step.done.is_file() and not (step.folder / "ckpt").exists()  # cleaned up after success
    assert step.cached() and runner.run_step(step) == (True, 0.0, True)
    assert jobs.job_seconds([jobs.Job("a", [step], 1)]) == pytest.approx(stamp["seconds"])
    # another command is not the cached one: the stale folder is removed and the step runs again
    (step.folder / "stale.txt").write_text("old")
    other = jobs.Step(step.argv + ["again"], step.folder, step.done, cleanup=step.cleanup)
    assert not other.cached()
    ok, seconds, cached = runner.run_step(other)
    assert ok and not cached and seconds > 0 and not (step.folder / "stale.txt").exists()
    step.stamp.write_text("{not json")
    assert not step.cached()


def test_failed_step_stops_its_job_and_is_not_cached(tmp_path, capsys):
    runner = jobs.Runner(tmp_path, 2)
    bad = _step(tmp_path, "bad", "import sys; print('oops'); sys.exit(3)")
    after = _step(tmp_path, "after", WRITE)
    good = _step(tmp_path, "good", WRITE)
    report = runner.run([jobs.Job("bad job", [bad, after], 1), jobs.Job("good job", [good], 2)])
    assert report["bad job"]["ok"] is False and report["bad job"]["cached"] is False
    assert report["good job"] == {"ok": True, "seconds": report["good job"]["seconds"], "cached": False}
    assert json.loads(bad.stamp.read_text())["rc"] == 3 and not bad.cached()
    assert not after.folder.exists()  # never started
    assert "FAILED bad job" in capsys.readouterr().out
    # run again: the good job comes from the cache, the bad one is retried
    report = jobs.Runner(tmp_path, 2).run([jobs.Job("bad job", [bad], 1), jobs.Job("good job", [good], 2)])
    assert report["good job"] == {"ok": True, "seconds": 0.0, "cached": True} and not report["bad job"]["ok"]


def test_runner_removes_nothing_outside_its_runs_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    step = jobs.Step([sys.executable, "-c", "pass"], outside, outside / "done.json")
    with pytest.raises(RuntimeError, match="refusing to remove"):
        jobs.Runner(tmp_path / "runs", 1).run_step(step)
    assert (outside / "keep.txt").read_text() == "mine"
