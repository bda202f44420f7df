"""The jobs of a reproduction: the plan (which subprocesses the requested claims need, with which arguments), the
cache (a step is skipped when its output exists and its stamp records the same argv) and the runner (at most N
subprocesses at a time, longest first)."""

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

from .config import CONFIGS, MECHS, RECIPE, REPO, Scale
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


def recipe_argv(config: str, extra: Sequence[str]) -> list[str]:
    """``recipes/continue_pretrain.py`` with one of ``recipes/configs`` and ``extra`` arguments."""
    return [sys.executable, RECIPE, "--config", f"{CONFIGS}/{config}", *extra]


def scratch_run_dir(runs: Path, mech: str, seed: int) -> Path:
    """The output folder of a from-scratch run."""
    return runs / "scratch" / f"{mech}_seed{seed}"


def smol_run_dir(runs: Path, seed: int) -> Path:
    """The output folder of a SmolLM2 continued pretraining run (claim 4, the older measurement)."""
    return runs / "smollm2_polynomial" / f"seed{seed}"


def scratch_train_argv(scale: Scale, mech: str, seed: int, out: Path) -> list[str]:
    """The recipe command of a from-scratch GPT-2 run of ``mech`` (a key of :data:`.config.MECHS`)."""
    config, extra = MECHS[mech]
    s = scale
    return recipe_argv(config, [
        *extra, "--config_overrides", s.gpt2_overrides, "--block_size", str(s.gpt2_block),
        "--per_device_train_batch_size", str(s.gpt2_batch), "--per_device_eval_batch_size", "16",
        "--max_train_steps", str(s.gpt2_steps), "--num_warmup_steps", str(s.gpt2_warmup),
        "--eval_steps", str(s.gpt2_eval_steps), "--checkpointing_steps", str(s.gpt2_steps),
        "--with_tracking", "false", "--disable_progress_bar", "true", "--seed", str(seed),
        "--output_dir", str(out), "--overwrite_output_dir", "true",
        *(["--max_eval_samples", str(s.gpt2_max_eval_samples)] if s.gpt2_max_eval_samples else [])])


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


def self_argv(job: str, **kwargs: Any) -> list[str]:
    """``benchmarks/reproduce.py --job <job>`` with its keyword arguments as JSON (sorted, so the argv is stable)."""
    return [sys.executable, "benchmarks/reproduce.py", "--job", job, "--job-args", json.dumps(kwargs, sort_keys=True)]


def plan(claims: set[int], seeds: list[int], scale: Scale, runs: Path) -> list[Job]:
    """Every job the requested claims need."""
    jobs: list[Job] = []
    if 4 in claims:
        base = runs / "smollm2_polynomial" / "sdpa_baseline"
        jobs.append(Job("claim4 sdpa baseline", [Step(self_argv("sdpa_ppl", scale=scale.name, out=str(base / "ppl.json")),
                                                      base, base / "ppl.json", fresh=False)], 3))
        for seed in seeds:
            d = smol_run_dir(runs, seed)
            jobs.append(Job(f"claim4 smollm2 polynomial seed {seed}",
                            [Step(smol_train_argv(scale, seed, d), d, d / "results.json",
                                  cleanup=[d / "checkpoints", d / "model.safetensors"])], 10))
    mechs: list[str] = []
    if claims & {2, 5}:
        mechs += ["softmax", "dagpam"]
    if claims & {3, 5}:
        mechs += ["poly_scaled"]
    if 3 in claims:
        mechs += ["poly_unscaled"]
    probed = ({"softmax", "dagpam", "poly_scaled"} if claims & {2, 5} else set()) | \
        ({"poly_scaled", "poly_unscaled"} if 3 in claims else set())
    for mech in mechs:
        for seed in seeds:
            d = scratch_run_dir(runs, mech, seed)
            steps = [Step(scratch_train_argv(scale, mech, seed, d), d, d / "results.json", cleanup=[d / "checkpoints"])]
            if mech in probed:
                p = d / "probe" / "probe.json"
                steps.append(Step(self_argv("probe", scale=scale.name, model=str(d), out=str(p)), p.parent, p,
                                  fresh=False))
            jobs.append(Job(f"scratch {mech} seed {seed}", steps, 6))
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


def example_commands(scale: Scale, rel_runs: str) -> list[str]:
    """The recipe commands of the training runs, for the report: one per from-scratch mechanism and the SmolLM2 run,
    with ``<seed>`` in place of the seed, outputs under ``rel_runs`` (relative to the repository root)."""
    examples = []
    for m in MECHS:
        argv = scratch_train_argv(scale, m, 0, Path(rel_runs) / "scratch" / f"{m}_seed<seed>")
        examples.append(" ".join(shell_word(a) for a in ["python", *argv[1:]]).replace("--seed 0", "--seed <seed>"))
    argv = smol_train_argv(scale, 0, Path(rel_runs) / "smollm2_polynomial" / "seed<seed>")
    examples.append(" ".join(shell_word(a) for a in ["python", *argv[1:]]).replace("--seed 0", "--seed <seed>"))
    return examples
