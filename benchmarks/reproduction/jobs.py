"""The jobs of a reproduction: the plan (which subprocesses the requested claims and parts need, with which
arguments), the cache (a step is skipped when its output exists and its stamp records the same argv) and the runner
(at most N subprocesses at a time, longest first)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (CONFIGS, CPT_ARMS, CPT_CONFIG, MECHS, MT_CONFIGS, RECIPE, REPO, SCRATCH_DATASET,
                     Scale)
from .files import read_json, write_json


@dataclass
class Step:
    """One subprocess: ``argv`` run in the repository root; done when ``done`` exists and ``stamp`` records the
    same argv. ``cleanup``: paths removed after success (checkpoints, big weights)."""

    argv: list[str]
    folder: Path
    done: Path
    cleanup: list[Path] = field(default_factory=list)
    fresh: bool = True  # remove a stale folder before running (recipe output folders)

    @property
    def stamp(self) -> Path:
        """Where the step records the argv it ran with (and, once run, its exit status and seconds)."""
        return self.folder / "reproduce_cmd.json"

    def cached(self) -> bool:
        """Done before with the same argv: its output exists and its stamp records this argv."""
        if not self.done.is_file() or not self.stamp.is_file():
            return False
        try:
            return read_json(self.stamp).get("argv") == self.argv
        except ValueError:
            return False


@dataclass
class Job:
    """Steps run one after the other (a training run, then its probe), as one unit of the scheduler."""
    name: str
    steps: list[Step]
    weight: float  # rough cost, for longest-first scheduling


def recipe_argv(config: str, extra: Sequence[str], recipe: str = RECIPE) -> list[str]:
    """``recipe`` (default ``recipes/continue_pretrain.py``) with one of ``recipes/configs`` and ``extra`` arguments."""
    return [sys.executable, recipe, "--config", f"{CONFIGS}/{config}", *extra]


@dataclass(frozen=True)
class Inputs:
    """What the main process prepares before any job (``corpus.py``; cached): the from-scratch and continued
    pretraining text as files (the recipe's split of wiki-text, the held-out articles cut to excerpts) and the
    from-scratch runs' trained tokenizer folder."""

    train_file: Path
    validation_file: Path
    tokenizer: Path


def default_inputs(runs: Path, scale: Scale) -> Inputs:
    """Where :func:`.corpus.prepare_split` writes the text files, and the tokenizer folder's name without the
    hash of its contents (what a plan shows before the tokenizer is trained, e.g. in tests)."""
    data = runs / "data" / SCRATCH_DATASET
    return Inputs(data / "train.jsonl", data / "validation.jsonl",
                  runs / "tokenizer" / f"{SCRATCH_DATASET}-bpe{scale.vocab_size}")


def scratch_run_dir(runs: Path, mech: str, seed: int) -> Path:
    """The output folder of a from-scratch run."""
    return runs / "scratch" / f"{mech}_seed{seed}"


def smol_run_dir(runs: Path, seed: int) -> Path:
    """The output folder of a SmolLM2 continued pretraining run (claim 4, the older measurement)."""
    return runs / "smollm2_polynomial" / f"seed{seed}"


def cpt_run_dir(runs: Path, arm: str, seed: int) -> Path:
    """The output folder of a continued pretraining run of SmolLM2 (``arm``: a key of :data:`.config.CPT_ARMS`)."""
    return runs / "cpt" / f"{arm}_seed{seed}"


def mt_run_dir(runs: Path, arm: str, seed: int) -> Path:
    """The output folder of a translation fine-tuning run of SmolLM2 (``arm``: a key of :data:`.config.MT_CONFIGS`)."""
    return runs / "mt" / f"{arm}_seed{seed}"


def scratch_train_argv(scale: Scale, mech: str, seed: int, out: Path, inputs: Inputs) -> list[str]:
    """The recipe command of a from-scratch GPT-2 run of ``mech`` (a key of :data:`.config.MECHS`)."""
    config, extra = MECHS[mech]
    s = scale
    return recipe_argv(config, [
        *extra, "--config_overrides", f"{s.gpt2_overrides},vocab_size={s.vocab_size}",
        "--tokenizer_name", str(inputs.tokenizer), "--train_file", str(inputs.train_file),
        "--validation_file", str(inputs.validation_file), "--block_size", str(s.gpt2_block),
        "--per_device_train_batch_size", str(s.gpt2_batch), "--per_device_eval_batch_size", "32",
        "--learning_rate", f"{s.gpt2_lr:g}", "--max_train_steps", str(s.gpt2_steps),
        "--num_warmup_steps", str(s.gpt2_warmup), "--eval_steps", str(s.gpt2_eval_steps), "--checkpointing_steps", "none",
        "--with_tracking", "false", "--disable_progress_bar", "true", "--seed", str(seed),
        "--output_dir", str(out), "--overwrite_output_dir", "true",
        *(["--max_eval_samples", str(s.gpt2_max_eval_samples)] if s.gpt2_max_eval_samples else []),
        *(["--max_train_samples", str(s.max_train_samples)] if s.max_train_samples else [])])


def smol_train_argv(scale: Scale, seed: int, out: Path) -> list[str]:
    """The recipe command of SmolLM2 swapped to polynomial, then continued pretraining."""
    s = scale
    extra = ["--block_size", str(s.smol_block), "--per_device_train_batch_size", str(s.smol_batch),
             "--per_device_eval_batch_size", "8", "--max_train_steps", str(s.smol_steps),
             "--num_warmup_steps", str(s.smol_warmup), "--eval_steps", str(s.smol_eval_steps),
             "--checkpointing_steps", str(s.smol_steps), "--with_tracking", "false", "--disable_progress_bar", "true",
             "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "true"]
    if s.smol_max_eval_samples:
        extra += ["--max_eval_samples", str(s.smol_max_eval_samples)]
    return recipe_argv("smollm2_polynomial.yaml", extra)


def cpt_train_argv(scale: Scale, arm: str, seed: int, out: Path, inputs: Inputs) -> list[str]:
    """The recipe command of SmolLM2 with ``arm``'s attention (daGPAM from lambda = 0, or its own softmax),
    continued pretraining on the wiki-text training articles; the recipe evaluates once, at the end, on the
    held-out excerpts (the step-0 model is the base model, measured once by the "cpt base" job)."""
    s = scale
    extra = ["--attn", CPT_ARMS[arm], "--dataset_name", "none", "--train_file", str(inputs.train_file),
             "--validation_file", str(inputs.validation_file), "--block_size", str(s.cpt_block),
             "--per_device_train_batch_size", str(s.cpt_batch), "--per_device_eval_batch_size", "8",
             "--max_train_steps", str(s.cpt_steps), "--num_warmup_steps", str(s.cpt_warmup), "--eval_steps", "none",
             "--eval_before_training", "false", "--checkpointing_steps", "none", "--with_tracking", "false",
             "--disable_progress_bar", "true", "--seed", str(seed), "--output_dir", str(out),
             "--overwrite_output_dir", "true"]
    if arm == "dagpam":
        extra += ["--attnswap_learning_rate", f"{s.cpt_attnswap_lr:g}"]
    if s.cpt_max_eval_samples:
        extra += ["--max_eval_samples", str(s.cpt_max_eval_samples)]
    if s.max_train_samples:
        extra += ["--max_train_samples", str(s.max_train_samples)]
    return recipe_argv(CPT_CONFIG, extra)


def mt_train_argv(scale: Scale, arm: str, seed: int, out: Path) -> list[str]:
    """The translation recipe command of SmolLM2 with ``arm``'s config (daGPAM from lambda = 0, or softmax): the
    config's data, lr and batch; the scale's steps; validation BLEU at step 0 and at the end only."""
    s = scale
    extra = ["--max_train_steps", str(s.mt_steps), "--num_warmup_steps", str(s.mt_warmup), "--eval_steps", "none",
             "--max_eval_samples", str(s.mt_eval_samples), "--eval_max_new_tokens", str(s.mt_max_new_tokens),
             "--checkpointing_steps", "none", "--disable_progress_bar", "true", "--seed", str(seed),
             "--output_dir", str(out), "--overwrite_output_dir", "true"]
    if arm == "dagpam":
        extra += ["--attnswap_learning_rate", f"{s.mt_attnswap_lr:g}"]
    return recipe_argv(MT_CONFIGS[arm], extra, recipe="recipes/finetune_translation.py")


def self_argv(job: str, **kwargs: Any) -> list[str]:
    """``benchmarks/reproduce.py --job <job>`` with its keyword arguments as JSON (sorted, so the argv is stable)."""
    return [sys.executable, "benchmarks/reproduce.py", "--job", job, "--job-args", json.dumps(kwargs, sort_keys=True)]


def scratch_mechs(claims: set[int]) -> list[str]:
    """The from-scratch mechanisms the claims need: softmax for any of 2, 3, 5 (the validity reference), daGPAM
    for 2 and 5, x³/√N for 3 and 5, unscaled x³ and the p = 1 control for 3."""
    mechs = ["softmax"] if claims & {2, 3, 5} else []
    mechs += ["dagpam"] if claims & {2, 5} else []
    mechs += ["poly_scaled"] if claims & {3, 5} else []
    mechs += ["poly_unscaled", "poly_p1"] if 3 in claims else []
    return mechs


def plan(claims: set[int], seeds: list[int], scale: Scale, runs: Path, parts: frozenset[str] | set[str] = frozenset(),
         inputs: Inputs | None = None) -> list[Job]:
    """Every job the requested claims and ``parts`` ("cpt", "mt") need; ``inputs``: what the main process prepared
    (default: :func:`default_inputs`)."""
    inputs = inputs or default_inputs(runs, scale)
    jobs: list[Job] = []
    if 4 in claims:
        base = runs / "smollm2_polynomial" / "sdpa_baseline"
        jobs.append(Job("claim4 sdpa baseline", [Step(self_argv("sdpa_ppl", scale=scale.name, out=str(base / "ppl.json")),
                                                      base, base / "ppl.json", fresh=False)], 3))
        for seed in seeds:
            d = smol_run_dir(runs, seed)
            jobs.append(Job(f"claim4 smollm2 polynomial seed {seed}",
                            [Step(smol_train_argv(scale, seed, d), d, d / "results.json",
                                  cleanup=[d / "checkpoints", d / "model.safetensors"])], 7))
    for mech in scratch_mechs(claims):
        for seed in seeds:
            d = scratch_run_dir(runs, mech, seed)
            p = d / "probe" / "probe.json"
            steps = [Step(scratch_train_argv(scale, mech, seed, d, inputs), d, d / "results.json",
                          cleanup=[d / "checkpoints"]),
                     Step(self_argv("probe", scale=scale.name, model=str(d), out=str(p),
                                    texts=str(inputs.validation_file)), p.parent, p, fresh=False)]
            jobs.append(Job(f"scratch {mech} seed {seed}", steps, 6))
    if "cpt" in parts:
        base = runs / "cpt" / "base"
        out = base / "ppl.json"
        jobs.append(Job("cpt base", [Step(self_argv("lm_ppl", scale=scale.name, model="smollm2", out=str(out),
                                                    wiki=str(inputs.validation_file)), base, out, fresh=False)], 3))
        for arm in CPT_ARMS:
            for seed in seeds:
                d = cpt_run_dir(runs, arm, seed)
                news = d / "news" / "ppl.json"
                jobs.append(Job(f"cpt {arm} seed {seed}", [
                    Step(cpt_train_argv(scale, arm, seed, d, inputs), d, d / "results.json", cleanup=[d / "checkpoints"]),
                    Step(self_argv("lm_ppl", scale=scale.name, model=str(d), out=str(news), wiki=None), news.parent,
                         news, cleanup=[d / "model.safetensors"], fresh=False)], 9))
    if "mt" in parts:
        base = runs / "mt" / "base"
        out = base / "test.json"
        jobs.append(Job("mt base", [Step(self_argv("mt_test", scale=scale.name, model="smollm2", out=str(out)),
                                         base, out, fresh=False)], 3))
        for arm in MT_CONFIGS:
            for seed in seeds:
                d = mt_run_dir(runs, arm, seed)
                test = d / "test" / "test.json"
                jobs.append(Job(f"mt {arm} seed {seed}", [
                    Step(mt_train_argv(scale, arm, seed, d), d, d / "results.json", cleanup=[d / "checkpoints"]),
                    Step(self_argv("mt_test", scale=scale.name, model=str(d), out=str(test)), test.parent, test,
                         cleanup=[d / "model.safetensors", d / "best"], fresh=False)], 10))
    if 1 in claims:
        for seed in seeds:
            d = runs / "claim1"
            out = d / f"seed{seed}.json"
            jobs.append(Job(f"claim1 seed {seed}", [Step(self_argv("claim1", scale=scale.name, seed=seed, out=str(out)),
                                                         d / f"seed{seed}", out, fresh=False)], 1))
    return jobs


def job_env() -> dict[str, str]:
    """The environment of every job: one thread, offline, unbuffered, the repository on PYTHONPATH."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "MPLBACKEND": "Agg"})
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Runner:
    """Runs jobs at most ``jobs_at_once`` at a time (the heaviest first), skipping the cached steps; only folders
    under ``runs`` are ever removed."""

    def __init__(self, runs: Path, jobs_at_once: int) -> None:
        self.runs, self.width = runs, jobs_at_once
        self.lock = threading.Lock()
        self.report: dict[str, dict[str, Any]] = {}

    def log(self, text: str) -> None:
        """One timestamped line on stdout (one thread at a time)."""
        with self.lock:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def run_step(self, step: Step) -> tuple[bool, float, bool]:
        """(ok, seconds, cached)."""
        if step.cached():
            return True, 0.0, True
        if step.fresh and step.folder.exists():
            if self.runs.resolve() not in step.folder.resolve().parents:
                raise RuntimeError(f"refusing to remove {step.folder}: not under {self.runs}")
            shutil.rmtree(step.folder)
        step.folder.mkdir(parents=True, exist_ok=True)
        step.done.unlink(missing_ok=True)
        write_json(step.stamp, {"argv": step.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        start = time.perf_counter()
        with open(step.folder / "reproduce_stdout.log", "w") as log:
            rc = subprocess.run(step.argv, cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT,
                                check=False).returncode
        seconds = time.perf_counter() - start
        ok = rc == 0 and step.done.is_file()
        stamp = read_json(step.stamp)
        stamp.update({"rc": rc, "seconds": seconds, "ok": ok})
        write_json(step.stamp, stamp)
        if ok:
            for path in step.cleanup:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        return ok, seconds, False

    def run_job(self, job: Job) -> dict[str, Any]:
        """The job's steps in order, stopping at the first failure: {"ok", "seconds", "cached"}."""
        self.log(f"start  {job.name}")
        total, all_cached = 0.0, True
        for step in job.steps:
            ok, seconds, cached = self.run_step(step)
            total += seconds
            all_cached &= cached
            if not ok:
                self.log(f"FAILED {job.name}: see {step.folder / 'reproduce_stdout.log'}")
                return {"ok": False, "seconds": total, "cached": False}
        self.log(f"done   {job.name} ({'cached' if all_cached else f'{total:.0f} s'})")
        return {"ok": True, "seconds": total, "cached": all_cached}

    def run(self, jobs: list[Job]) -> dict[str, dict[str, Any]]:
        """Every job; {job name: :meth:`run_job`'s dict}."""
        order = sorted(jobs, key=lambda j: -j.weight)
        with ThreadPoolExecutor(max_workers=self.width) as pool:
            futures: dict[Future, Job] = {pool.submit(self.run_job, j): j for j in order}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    self.report[futures[f].name] = f.result()
        return self.report


def shell_word(a: str) -> str:
    """``a`` quoted for a shell, except the ``<seed>`` placeholders the report prints as they are."""
    return a if a.startswith("<") or ("<seed>" in a and "'" not in a and '"' not in a) else shlex.quote(a)


def job_seconds(jobs: Sequence[Job]) -> float:
    """Subprocess seconds of every step of ``jobs`` as their stamps record them (a cached step: when it ran)."""
    total = 0.0
    for job in jobs:
        for step in job.steps:
            if step.stamp.is_file():
                total += float(read_json(step.stamp).get("seconds") or 0.0)
    return total


def job_span(jobs: Sequence[Job]) -> dict[str, Any] | None:
    """When the jobs' steps ran, from their stamps (cached or not): {"first_started", "last_finished" (local time,
    "%Y-%m-%d %H:%M"), "span_seconds", "job_seconds_total", "git_revisions" (sorted: those the training runs'
    results.json record)}; None when no stamp has a time."""
    starts, ends, revisions, total = [], [], set(), 0.0
    for job in jobs:
        for step in job.steps:
            if not step.stamp.is_file():
                continue
            stamp = read_json(step.stamp)
            total += float(stamp.get("seconds") or 0.0)
            if not stamp.get("started") or stamp.get("seconds") is None:
                continue
            t0 = time.mktime(time.strptime(stamp["started"], "%Y-%m-%d %H:%M:%S"))
            starts.append(t0)
            ends.append(t0 + float(stamp["seconds"]))
            results = step.stamp.parent / "results.json"
            if results.is_file():
                rev = read_json(results).get("git_revision")
                if rev:
                    revisions.add(str(rev))
    if not starts:
        return None
    fmt = "%Y-%m-%d %H:%M"
    return {"first_started": time.strftime(fmt, time.localtime(min(starts))),
            "last_finished": time.strftime(fmt, time.localtime(max(ends))), "span_seconds": max(ends) - min(starts),
            "job_seconds_total": total, "git_revisions": sorted(revisions)}


def example_commands(scale: Scale, rel_runs: str, inputs: Inputs | None = None,
                     parts: frozenset[str] | set[str] = frozenset({"cpt", "mt"})) -> list[str]:
    """The recipe commands of the training runs, for the report: one per from-scratch mechanism, the SmolLM2
    polynomial run of claim 4 and, for ``parts``, one per continued pretraining and translation arm, with
    ``<seed>`` in place of the seed, outputs under ``rel_runs`` (relative to the repository root)."""
    runs = Path(rel_runs)
    inputs = inputs or default_inputs(runs, scale)

    def show(argv: list[str]) -> str:
        return " ".join(shell_word(a) for a in ["python", *argv[1:]]).replace("--seed 0", "--seed <seed>")

    examples = [show(scratch_train_argv(scale, m, 0, runs / "scratch" / f"{m}_seed<seed>", inputs)) for m in MECHS]
    examples.append(show(smol_train_argv(scale, 0, runs / "smollm2_polynomial" / "seed<seed>")))
    if "cpt" in parts:
        examples += [show(cpt_train_argv(scale, a, 0, cpt_run_dir(runs, a, 0).with_name(f"{a}_seed<seed>"), inputs))
                     for a in CPT_ARMS]
    if "mt" in parts:
        examples += [show(mt_train_argv(scale, a, 0, mt_run_dir(runs, a, 0).with_name(f"{a}_seed<seed>")))
                     for a in MT_CONFIGS]
    return examples
