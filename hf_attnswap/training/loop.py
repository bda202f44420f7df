"""The training loop both recipes share: Accelerate, token-correct gradient accumulation, evaluation and
checkpoints every N steps, exact resumption, progress bar, JSONL + tracker logs, Ctrl-C / SIGTERM safety, a stop
at the first non-finite loss, gradient norm or weights, final save.

Read top to bottom: :func:`make_accelerator` (checks that the launch matches the machine),
:func:`prepare_output_dir` (refuses to overwrite checkpoints or a finished run, checks the resume checkpoint;
before anything heavy), the loop's units (:class:`ResumeState` and :func:`epoch_batches`: what exact resumption
saves and restores; :func:`accumulation_step`: one optimiser step's gradients; :class:`Evaluator`: evaluation and
the best model; :class:`NonFiniteGuard`: skip or stop at non-finite values), :func:`train` (the loop),
:func:`save_final` (model + tokenizer; LoRA: adapter and merged model), :func:`run_recipe` (``error: ...`` instead of
tracebacks, exit codes).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AttnSwapError
from ..transformers_hooks import cpu_has_native_bf16, forget_prepared, set_last_lr
from .arguments import TrainArguments
from .checkpoint import (CHECKPOINTS_DIR, CheckpointError, ResumePoint, latest_intact, list_checkpoints,
                         load_checkpoint, resolve_resume, save_checkpoint)
from .optim import build_optimizer, build_scheduler, peak_learning_rates

__all__ = ["Evaluator", "JsonlLog", "LaunchError", "NonFiniteError", "NonFiniteGuard", "ResumeState", "RunStart",
           "StepResult", "Terminated", "TrainingOutcome", "accumulation_step", "apply_update", "check_launch",
           "epoch_batches", "finished_run_files", "learning_rates", "load_resume_state", "make_accelerator",
           "prepare_output_dir", "recipe_command", "resume_command", "run_recipe", "save_final", "skip_update",
           "train"]

IGNORE_INDEX = -100
EvalFn = Callable[[nn.Module, int], dict[str, float]]


class LaunchError(AttnSwapError):
    """The Accelerate launch does not match this machine (GPUs asked for but absent, fp16 on CPU, no DeepSpeed)."""


class NonFiniteError(AttnSwapError):
    """Training diverged: a non-finite loss, gradient norm or weights. Not bad input: :func:`run_recipe` returns 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send), raised like Ctrl-C's ``KeyboardInterrupt`` so that the run stops
    the same way; :func:`run_recipe` returns 143."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def check_launch(mixed_precision: str | None) -> None:
    """Raise :class:`LaunchError` before any compute if what ``accelerate launch`` (or its config file) asks for
    cannot run here: GPU processes without CUDA, more processes per node than GPUs, a CPU launch that asked for N
    processes but started one, fp16 without CUDA, DeepSpeed not installed. Reads the environment that
    ``accelerate launch`` sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cpu = _env_flag("ACCELERATE_USE_CPU")
    gpus = torch.cuda.device_count()
    fix = ("On a machine without GPUs run `ACCELERATE_USE_CPU=1 accelerate launch --config_file "
           "recipes/configs/accelerate/cpu.yaml ...` (or `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N ...`), "
           "or run where the GPUs are.")
    if use_cpu and world == 1 and os.environ.get("MASTER_ADDR") and not any(
            os.environ.get(v) for v in ("LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        # Accelerate's simple launcher sets MASTER_ADDR for num_processes > 1 but, without mpirun, starts one process
        raise LaunchError("`accelerate launch --cpu --num_processes N` (or a MULTI_CPU config without mpirun) starts "
                          "only ONE process, which would train with 1/N of the global batch. " + fix +
                          " (For a single process, unset MASTER_ADDR.)")
    if world > 1 and not use_cpu and gpus == 0:
        raise LaunchError(f"this launch asks for {world} GPU processes, but this machine has no CUDA device. {fix}")
    if not use_cpu and gpus > 0 and local_world > gpus:
        raise LaunchError(f"this launch starts {local_world} processes on this machine, but it has only {gpus} GPU(s). "
                          f"Set num_processes <= {gpus} in the Accelerate config.")
    precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and (use_cpu or gpus == 0):
        raise LaunchError("mixed_precision=fp16 needs a CUDA GPU; on CPU use bf16 (where the CPU has it), auto or no.")
    if precision == "bf16" and (use_cpu or gpus == 0) and not cpu_has_native_bf16():
        raise LaunchError(
            f"mixed_precision=bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX512 or AMX) would be "
            "far slower, not faster: it has no bfloat16 matrix kernels, and bf16 autocast runs every matrix product "
            "on a fallback about 100x slower than float32. Use --mixed_precision auto (bf16 only where the CPU or GPU "
            "computes it natively, else no) or --mixed_precision no.")
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise LaunchError("this Accelerate config uses DeepSpeed, which is not installed: pip install deepspeed "
                              "(on a CUDA machine), or use the ddp/fsdp config.") from None


def resolve_mixed_precision(requested: str | None) -> str | None:
    """``requested`` (``no``, ``bf16``, ``fp16``, ``auto`` or None: Accelerate's launch setting) with ``auto`` made
    concrete, and said on stdout: ``bf16`` where the training device computes it natively (a CUDA GPU with bf16, or a
    CPU with oneDNN's bf16 kernels: AVX512 or AMX), else ``no`` (said by the first process only). The other values are returned as they are."""
    if requested != "auto":
        return requested
    on_cpu = _env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    if on_cpu:
        native = cpu_has_native_bf16()
        where = f"this CPU ({torch.backends.cpu.get_cpu_capability()}) {'has' if native else 'has no'} bf16 matrix kernels"
    else:
        native = torch.cuda.is_bf16_supported()
        where = f"this GPU ({torch.cuda.get_device_name()}) {'computes' if native else 'does not compute'} bf16"
    precision = "bf16" if native else "no"
    if int(os.environ.get("RANK", "0")) == 0:  # once per launch, not once per process
        print(f"mixed_precision auto -> {precision}: {where}", flush=True)
    return precision


def make_accelerator(args: TrainArguments, project_name: str) -> Any:
    """An ``Accelerator`` for ``args`` after :func:`check_launch`; trackers (``with_tracking``) log under
    ``<output_dir>/tracking``. Gradient accumulation is done by :func:`train` itself (token-correct)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    precision = resolve_mixed_precision(args.mixed_precision)
    check_launch(precision)
    kwargs: dict[str, Any] = {}
    if precision is not None:
        kwargs["mixed_precision"] = precision
    if args.with_tracking:
        kwargs["log_with"] = args.report_to
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "tracking")),
        **kwargs,
    )
    return accelerator


def _add_metrics(total: dict[str, Any], metrics: dict[str, Any] | None) -> None:
    """Add a model output's ``metrics`` (``{name: float or list of floats}``, this process's) into ``total``; they
    go into the step's log record beside the loss. Like the loss, each micro-batch's value is its share of the
    step (normalised by ``num_items_in_batch``), so that they add up over the micro-batches."""
    for name, value in (metrics or {}).items():
        if isinstance(value, (list, tuple)):
            prev = total.get(name) or [0.0] * len(value)
            total[name] = [a + float(v) for a, v in zip(prev, value)]
        else:
            total[name] = total.get(name, 0.0) + float(value)


class JsonlLog:
    """Append one JSON object per line to ``path`` (main process only)."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class TrainingOutcome:
    """What :func:`train` did: the model is trained in place."""

    step: int
    total_steps: int
    interrupted: bool
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    train_loss: float | None = None
    tokens_seen: int = 0
    seconds: float = 0.0
    signal: str | None = None  # "SIGINT" / "SIGTERM" when a signal interrupted the run
    skipped_steps: list[dict[str, Any]] = field(default_factory=list)  # non-finite steps skipped (max_bad_steps)
    inexact_resume: list[str] = field(default_factory=list)  # why a resume was not exact (allow_inexact_resume)

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM, else 0 (also after ``stop_after_steps``)."""
        return {"SIGINT": 130, "SIGTERM": 143}.get(self.signal or "", 0)


def _rng_states() -> tuple[Any, ...]:
    import numpy as np

    return (torch.get_rng_state(), random.getstate(), np.random.get_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_states(states: tuple[Any, ...]) -> None:
    import numpy as np

    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])
    if states[3] is not None:
        torch.cuda.set_rng_state_all(states[3])


def _chunks(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        chunk = []
        for batch in it:
            chunk.append(batch)
            if len(chunk) == size:
                break
        if not chunk:
            return
        yield chunk


# What a finished run leaves in output_dir (see save_final and report.write_results), and what else a run writes.
_WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model-*.bin", "pytorch_model.bin.index.json")
_FINAL_FILES = ("results.json", *_WEIGHT_PATTERNS, "config.json", "generation_config.json")
_FINAL_DIRS = ("adapter",)
_RUN_DIRS = (CHECKPOINTS_DIR, "best", "tracking")


def finished_run_files(output_dir: str | os.PathLike[str]) -> list[str]:
    """The files in ``output_dir`` that show a finished run: ``results.json`` or the final model's weights."""
    out = Path(output_dir)
    return sorted({p.name for pattern in ("results.json", *_WEIGHT_PATTERNS) for p in out.glob(pattern) if p.is_file()})


def _clear(out: Path, *, final_only: bool) -> None:
    """Delete a previous run's final outputs (and, unless ``final_only``, its checkpoints, log, best model and
    tracker logs) from ``out``. Nothing else (tokenizer files are replaced by the next save)."""
    for pattern in _FINAL_FILES if final_only else (*_FINAL_FILES, "log.jsonl"):
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
    for name in _FINAL_DIRS if final_only else (*_FINAL_DIRS, *_RUN_DIRS):
        shutil.rmtree(out / name, ignore_errors=True)


@dataclass
class RunStart:
    """What :func:`prepare_output_dir` decided: the checked checkpoint to resume from (``None``: a fresh run) and
    what :func:`train` deletes of an earlier run before it starts (``"all"``, ``"final"`` or ``None``)."""

    resume: ResumePoint | None = None
    clear: str | None = None


def prepare_output_dir(args: TrainArguments, accelerator: Any) -> RunStart:
    """Check ``output_dir`` and the resume checkpoint before anything heavy is loaded (call right after
    :func:`make_accelerator`, pass the result to :func:`train`).

    A fresh run refuses a folder that holds checkpoints, a finished run (``results.json``, model weights) or the
    ``log.jsonl`` of an earlier run, unless ``overwrite_output_dir``: then :func:`train` deletes them (with ``best/``
    and ``tracking/``) when it starts, i.e. only once the data and the model have loaded. A resume into a folder with
    a finished run is allowed when it continues that run (the checkpoint is in its ``checkpoints/``); from elsewhere
    it needs ``overwrite_output_dir`` (then only the finished run's results and weights go). A damaged checkpoint,
    or an inexact resume without ``allow_inexact_resume``, raises :class:`~.checkpoint.CheckpointError`."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output_dir {out} is a file, not a folder; pick another --output_dir.")
    finished = finished_run_files(out)
    existing = list_checkpoints(out)
    point, clear = None, None
    if args.resume_from_checkpoint is None:
        old_log = (out / "log.jsonl").is_file() and not existing and not finished  # a run that left nothing else
        if (existing or finished or old_log) and not args.overwrite_output_dir:
            what = " and ".join([*([f"checkpoints (newest: {existing[-1].name})"] if existing else []),
                                 *([f"a finished run ({', '.join(finished)})"] if finished else []),
                                 *(["the log.jsonl of an earlier run (which left no checkpoint)"] if old_log else [])])
            raise CheckpointError(
                f"{out} already holds {what}. Pick another --output_dir, pass --overwrite_output_dir to delete the old "
                f"run (checkpoints, log.jsonl, results.json, weights), or continue it with --resume_from_checkpoint latest"
                f"{' and a larger max_train_steps' if finished else ''}.")
        if existing or finished or old_log:
            clear = "all"
    else:
        point = resolve_resume(args.resume_from_checkpoint, out, world_size=accelerator.num_processes,
                               process_index=accelerator.process_index, allow_inexact=args.allow_inexact_resume)
        inside = point.path.resolve().parent == (out / CHECKPOINTS_DIR).resolve()
        if finished and not inside:
            if not args.overwrite_output_dir:
                raise CheckpointError(
                    f"{out} already holds a finished run ({', '.join(finished)}), and {point.path} is not one of its "
                    f"checkpoints: resuming would replace it. Pick another --output_dir, or pass --overwrite_output_dir.")
            clear = "final"
        if accelerator.is_main_process:
            for line in point.skipped:
                print(line, flush=True)
            if finished and inside:
                print(f"resuming the finished run in {out}: its {', '.join(finished)} will be replaced at the end",
                      flush=True)
            for why in point.inexact:
                print(f"WARNING: inexact resume (--allow_inexact_resume): {why}. This run will not end with the "
                      f"weights of an uninterrupted run; results.json records it.", file=sys.stderr, flush=True)
    return RunStart(point, clear)


def recipe_command(script: str | os.PathLike[str], argv: list[str] | None) -> list[str]:
    """The command line that ran a recipe: ``python <script> <argv>`` (``argv`` default ``sys.argv[1:]``), the
    script relative to the working folder when it is inside it; for :func:`resume_command`."""
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return ["python", shown, *(sys.argv[1:] if argv is None else argv)]


_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "t", "f", "y", "n"}


def resume_command(command: list[str], checkpoint: str | os.PathLike[str], *, processes: int = 1,
                   **replace: Any) -> str:
    """``command`` (from :func:`recipe_command`) with ``--resume_from_checkpoint checkpoint`` instead of any resume
    or overwrite flag, and each ``replace`` field set to its value; as one shell line."""
    drop = {"resume_from_checkpoint", "overwrite_output_dir", "stop_after_steps", *replace}
    words, i = [], 0
    while i < len(command):
        word = command[i]
        name, eq, _ = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        if name in drop:
            i += 1
            if not eq and i < len(command) and not command[i].startswith("--") and (
                    name != "overwrite_output_dir" or command[i].lower() in _BOOL_WORDS):
                i += 1
            continue
        words.append(word)
        i += 1
    for name, value in replace.items():
        words += [f"--{name}", str(value)]
    words += ["--resume_from_checkpoint", str(checkpoint)]
    if processes > 1 and words and words[0] == "python":  # launched by accelerate launch / torchrun
        return "accelerate launch <the same launch options> " + shlex.join(words[1:])
    return shlex.join(words)


def _number(x: float | None) -> float | str | None:
    """``x`` for JSON: non-finite values as the strings "nan", "inf", "-inf" (JSON has no NaN)."""
    return x if x is None or math.isfinite(x) else str(x)


def _weights_finite(model: nn.Module, accelerator: Any) -> bool:
    """Whether every parameter of ``model`` is finite, agreed over all processes (FSDP: each checks its shards)."""
    ok = True
    with torch.no_grad():
        for p in model.parameters():
            t = p.to_local() if hasattr(p, "to_local") else p
            if t.numel() and t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                ok = False
                break
    bad = accelerator.reduce(torch.tensor(0.0 if ok else 1.0, device=accelerator.device), "sum")
    return float(bad) == 0


def _apply_learning_rates(optimizer: Any, scheduler: Any, args: TrainArguments) -> dict[str, tuple[float, float]]:
    """After a resume: if ``args`` asks for other peak learning rates than the checkpoint's schedule, rescale the
    schedule (same shape, same position) to them. Returns ``{group: (old peak, new peak)}`` for the changed ones."""
    from torch.optim.lr_scheduler import LambdaLR

    peaks = peak_learning_rates(args)
    changed = {}
    for i, group in enumerate(optimizer.param_groups):
        name = group.get("name")
        if name not in peaks or not hasattr(scheduler, "base_lrs"):
            continue
        old, new = float(scheduler.base_lrs[i]), float(peaks[name])
        if old == new:
            continue
        if isinstance(scheduler, LambdaLR):
            lr = new * scheduler.lr_lambdas[i](scheduler.last_epoch)
        else:
            lr = group["lr"] * new / old if old else new
        scheduler.base_lrs[i] = new
        group["initial_lr"] = new
        group["lr"] = lr
        set_last_lr(scheduler, i, lr)
        changed[name] = (old, new)
    return changed


@dataclass
class ResumeState:
    """What a checkpoint's ``recipe_state.json`` holds of the loop, beside what ``Accelerator.save_state`` writes
    (model, optimiser, schedule, the random states of every process): the optimiser ``step``, the data position
    (``epoch`` and the ``batches_in_epoch`` of it already consumed, as micro-batches of this process) and the
    outcome so far. Together they let a resumed run end with the weights of an uninterrupted one; the random
    states around the start of each epoch are kept by :func:`epoch_batches`."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens_seen: int = 0
    best: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: list[dict[str, Any]] = field(default_factory=list)
    inexact_resume: list[str] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], inexact: list[str]) -> ResumeState:
        """From the recipe state :func:`~.checkpoint.load_checkpoint` returned (older checkpoints may lack the
        outcome's keys); ``inexact``: why this resume is not exact, added to the checkpoint's own reasons."""
        return cls(step=state["step"], epoch=state["epoch"], batches_in_epoch=state["batches_in_epoch"],
                   tokens_seen=state["tokens_seen"], best=state.get("best"),
                   evaluations=list(state.get("evaluations", [])), skipped_steps=list(state.get("skipped_steps", [])),
                   inexact_resume=[*state.get("inexact_resume", []), *inexact])

    def outcome(self, total_steps: int) -> TrainingOutcome:
        """The :class:`TrainingOutcome` that the loop continues from this state (and keeps up to date)."""
        return TrainingOutcome(step=self.step, total_steps=total_steps, interrupted=False, best=self.best,
                               tokens_seen=self.tokens_seen, evaluations=list(self.evaluations),
                               skipped_steps=list(self.skipped_steps), inexact_resume=list(self.inexact_resume))

    @staticmethod
    def record(outcome: TrainingOutcome, epoch: int, batches_in_epoch: int, optimizer: Any) -> dict[str, Any]:
        """The recipe state to save after ``outcome``'s step with the data at ``(epoch, batches_in_epoch)``, with
        the optimiser's parameter groups (see :func:`optimizer_groups`); :func:`~.checkpoint.save_checkpoint` adds
        the step."""
        return {"epoch": epoch, "batches_in_epoch": batches_in_epoch, "tokens_seen": outcome.tokens_seen,
                "best": outcome.best, "evaluations": outcome.evaluations, "skipped_steps": outcome.skipped_steps,
                "inexact_resume": outcome.inexact_resume, "total_steps": outcome.total_steps,
                "optimizer_groups": optimizer_groups(optimizer)}


def optimizer_groups(optimizer: Any) -> dict[str, int]:
    """``{group name (or index): number of parameters}`` of ``optimizer``: what its saved state must match."""
    return {str(g.get("name", i)): len(g["params"]) for i, g in enumerate(optimizer.param_groups)}


def epoch_batches(accelerator: Any, dataloader: Any, epoch: int, skip: int) -> Iterator[Any]:
    """The micro-batches of ``epoch`` after the first ``skip`` (a resume's data position). Starting the (lazy)
    iterator draws a seed from the global random state; that state is put back, so that where an epoch starts does
    not shift dropout randomness: a resumed run draws what an uninterrupted one does."""
    saved_rng = _rng_states()
    dataloader.set_epoch(epoch)
    active = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
    iterator = iter(active)
    first = next(iterator, None)  # starts the (lazy) iterator, which draws a seed from the global RNG
    _set_rng_states(saved_rng)
    return itertools.chain([first] if first is not None else [], iterator)


def load_resume_state(accelerator: Any, point: ResumePoint | None, optimizer: Any, scheduler: Any,
                      args: TrainArguments, log: JsonlLog, total_steps: int) -> ResumeState:
    """A fresh :class:`ResumeState`, or (``point`` given) the checkpoint's: restores the training state, logs and
    prints the resume, and rescales the schedule to the learning rates of ``args`` if they changed."""
    if point is None:
        return ResumeState()
    saved, now = point.state.get("optimizer_groups"), optimizer_groups(optimizer)
    if saved is not None and saved != now:  # else torch's load fails, and the checkpoint would look corrupt
        raise CheckpointError(
            f"checkpoint {point.path.name} was saved by a run that trained other parameters: its optimiser's groups "
            f"(name: parameters) are {saved}, this run's are {now}. Resume with the settings it was started with "
            "(learning_rate_patterns, finetune_trainable, LoRA, the attention), or start a new run in another "
            "output_dir.")
    state = ResumeState.from_checkpoint(load_checkpoint(accelerator, point), point.inexact)
    log.write({"step": state.step, "event": "resumed", "checkpoint": str(point.path),
               **({"inexact": point.inexact} if point.inexact else {})})
    changed = _apply_learning_rates(optimizer, scheduler, args)
    if accelerator.is_main_process:
        print(f"resumed from {point.path} (step {state.step} of {total_steps})", flush=True)
        for name, (old, new) in changed.items():
            print(f"learning rate of {name}: peak {old:g} in the checkpoint, {new:g} now; the schedule continues "
                  f"from step {state.step} scaled to the new peak", flush=True)
    if changed:
        log.write({"step": state.step, "event": "learning_rate_changed",
                   **{f"lr/{k}": {"old": o, "new": n} for k, (o, n) in changed.items()}})
    return state


@dataclass
class StepResult:
    """One optimiser step's gradients, as :func:`accumulation_step` left them (not yet applied)."""

    loss: float  # the step's mean token loss: the normalised micro-batch losses summed over micro-batches, processes
    grad_norm: float | None  # the gradient norm before clipping (None where Accelerate gives none)
    bad: bool  # a non-finite loss (or, without a loss scaler, gradient norm) on some process: do not apply
    tokens: int  # input tokens of the step over all processes (this process's times the number of processes)
    metrics: dict[str, Any] = field(default_factory=dict)  # this process's model metrics, summed over micro-batches


def accumulation_step(accelerator: Any, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], *,
                      max_grad_norm: float, check_grad_norm: bool = True) -> StepResult:
    """Forward and backward over one optimiser step's ``micro_batches``, then clip; the update is left to the caller
    (:func:`apply_update` or, if ``bad``, :func:`skip_update`).

    Each micro-batch's loss is the sum of its token losses divided by the target tokens (labels != -100, after the
    shift) of the whole step, over all micro-batches and processes, so accumulation and padding do not change the
    result. Gradients are synchronised only on the last micro-batch (``no_sync`` before). The gradient norm is
    computed also without clipping (``max_grad_norm <= 0``: a max norm of inf scales by exactly 1). One collective
    agrees the step's loss and whether any process saw a non-finite loss or (``check_grad_norm``; not with fp16's
    loss scaler, whose business inf gradients are) gradient norm."""
    targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    total_targets = int(accelerator.reduce(torch.tensor(targets, device=accelerator.device), "sum"))
    step_loss = torch.zeros((), device=accelerator.device)
    step_tokens = 0
    step_metrics: dict[str, Any] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            # loss = (sum of this micro-batch's token losses) / (target tokens of the whole step)
            output = model(**batch, num_items_in_batch=max(total_targets, 1))
            loss = output.loss
            accelerator.backward(loss * accelerator.num_processes)  # DDP averages over processes
        step_loss += loss.detach().float()
        _add_metrics(step_metrics, getattr(output, "metrics", None))
        del output
        step_tokens += int(batch["input_ids"].numel()) * accelerator.num_processes
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    if norm is not None and hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    grad_norm = float(norm) if norm is not None else None
    local_bad = not bool(torch.isfinite(step_loss)) or (
        grad_norm is not None and check_grad_norm and not math.isfinite(grad_norm))
    # one collective: the step's loss (sum over processes) and whether any process saw a non-finite value
    stats = accelerator.reduce(torch.stack([step_loss, torch.tensor(float(local_bad), device=accelerator.device)]),
                               "sum")
    return StepResult(loss=float(stats[0]), grad_norm=grad_norm, bad=float(stats[1]) > 0, tokens=step_tokens,
                      metrics=step_metrics)


def apply_update(optimizer: Any, scheduler: Any) -> None:
    """Apply the accumulated gradients, advance the schedule, clear the gradients."""
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def skip_update(optimizer: Any, scheduler: Any) -> None:
    """Drop the accumulated gradients (they never reach the weights); the schedule still advances, since it follows
    the step count."""
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def learning_rates(optimizer: Any) -> dict[str, float]:
    """``{"lr/<group name or index>": lr}`` of the optimiser's parameter groups, as logged."""
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


class Evaluator:
    """Evaluation during training and the best-model bookkeeping.

    :meth:`run` calls ``evaluate(eval_model, step)`` (nothing if ``evaluate`` is ``None``), appends
    ``{"step": step, "eval/<name>": value, ...}`` to ``outcome.evaluations`` and the log, passes the metrics to
    ``track`` (the trackers' log, if any), and, with ``best_metric=(name, "max"|"min")``, records a strict
    improvement of ``outcome.best`` (``{"metric", "value", "step"}``) and calls ``on_best(eval_model, step,
    metrics)``. Then ``train_model`` is put back in training mode."""

    def __init__(self, evaluate: EvalFn | None, eval_model: nn.Module, train_model: nn.Module,
                 outcome: TrainingOutcome, log: JsonlLog, *, best_metric: tuple[str, str] | None = None,
                 on_best: Callable[[nn.Module, int, dict[str, float]], None] | None = None,
                 track: Callable[..., Any] | None = None) -> None:
        self.evaluate, self.eval_model, self.train_model = evaluate, eval_model, train_model
        self.outcome, self.log, self.best_metric, self.on_best, self.track = outcome, log, best_metric, on_best, track

    def run(self, step: int) -> None:
        """Evaluate after ``step``."""
        if self.evaluate is None:
            return
        metrics = self.evaluate(self.eval_model, step)
        record = {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}
        self.outcome.evaluations.append(record)
        self.log.write(record)
        if self.track is not None:
            self.track({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if self.best_metric is not None:
            name, mode = self.best_metric
            value = metrics[name]
            best = self.outcome.best
            if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
                self.outcome.best = {"metric": name, "value": value, "step": step}
                if self.on_best is not None:
                    self.on_best(self.eval_model, step, metrics)
        self.train_model.train()

    def periodic(self, step: int, eval_steps: int | None, total_steps: int) -> None:
        """Evaluate after ``step`` if it is a multiple of ``eval_steps`` before the last (that one is :meth:`final`)."""
        if eval_steps and step % eval_steps == 0 and step < total_steps:
            self.run(step)

    def final(self, step: int) -> None:
        """Evaluate the final model unless the last evaluation was at ``step`` already."""
        evaluations = self.outcome.evaluations
        if self.evaluate is not None and not (evaluations and evaluations[-1]["step"] == step):
            self.run(step)


class NonFiniteGuard:
    """What a non-finite step or non-finite weights do: skip the step (up to ``max_bad_steps``, never under
    DeepSpeed, whose engine steps inside backward) or stop the run with :class:`NonFiniteError`, whose message
    names the last good checkpoint and the command to resume from it with a lower learning rate."""

    def __init__(self, accelerator: Any, model: nn.Module, log: JsonlLog, out: Path, args: TrainArguments,
                 command: list[str], *, deepspeed: bool) -> None:
        self.accelerator, self.model, self.log, self.out = accelerator, model, log, out
        self.args, self.command, self.deepspeed = args, command, deepspeed

    def advice(self, bad_step: int) -> str:
        """How to go on after ``bad_step`` diverged."""
        args = self.args
        good = latest_intact(self.out)
        lower = {"learning_rate": f"{args.learning_rate / 10:g}"}
        if args.attnswap_learning_rate:
            lower["attnswap_learning_rate"] = f"{args.attnswap_learning_rate / 10:g}"
        skip = ("" if self.deepspeed else f" (Or let up to N such steps be skipped instead: --max_bad_steps N; now "
                                          f"{args.max_bad_steps}.)")
        if good is None:
            return (f"No checkpoint was saved before step {bad_step} (set --checkpointing_steps): start again with a "
                    f"lower learning rate, e.g. --learning_rate {lower['learning_rate']} --overwrite_output_dir."
                    f"{skip}")
        return (f"The last good checkpoint is {good}; resume from it with a lower learning rate:\n  "
                f"{resume_command(self.command, good, processes=self.accelerator.num_processes, **lower)}\n"
                f"{skip.strip()}")

    def check_weights(self, step: int, when: str) -> None:
        """Raise :class:`NonFiniteError` if the weights after ``step`` are not finite (then ``when``, e.g. "the
        final model", is not written)."""
        if _weights_finite(self.model, self.accelerator):
            return
        self.log.write({"step": step, "event": "non_finite", "what": "weights"})
        raise NonFiniteError(f"after step {step} the model's weights are not finite (the loss and gradient norm of "
                             f"step {step} were finite; its update was not: the learning rate is far too high), so "
                             f"{when} was not written. {self.advice(step)}")

    def bad_step(self, step: int, result: StepResult, skipped_steps: list[dict[str, Any]], bar: Any) -> None:
        """``step`` (1-based) was non-finite: record it in ``skipped_steps`` and the log (the caller then calls
        :func:`skip_update`), or, past ``max_bad_steps`` or under DeepSpeed, close ``bar`` and raise
        :class:`NonFiniteError`."""
        args = self.args
        record = {"step": step, "loss": _number(result.loss), "grad_norm": _number(result.grad_norm)}
        skipped_steps.append(record)
        if self.deepspeed or len(skipped_steps) > args.max_bad_steps:
            skipped_steps.pop()
            self.log.write({**record, "event": "non_finite", "skipped_before": len(skipped_steps)})
            bar.close()
            allowed = (f"; {len(skipped_steps)} bad step(s) were skipped before, max_bad_steps="
                       f"{args.max_bad_steps}" if args.max_bad_steps else "")
            raise NonFiniteError(
                f"step {step}: the loss is {result.loss:g} and the gradient norm "
                f"{'unknown' if result.grad_norm is None else f'{result.grad_norm:g}'}: training diverged and stopped "
                f"there{allowed}. No final model or results.json was written. {self.advice(step)}")
        self.log.write({**record, "event": "skipped_step", "skipped": len(skipped_steps)})
        if self.accelerator.is_main_process:
            print(f"step {step}: non-finite loss {result.loss:g} / gradient norm {result.grad_norm}; update "
                  f"skipped ({len(skipped_steps)} of at most {args.max_bad_steps})", flush=True)


def _log_step(log: JsonlLog, track: Callable[..., Any] | None, bar: Any, step: int, epoch: int, result: StepResult,
              lrs: dict[str, float], *, tokens_per_second: float, tokens_seen: int) -> None:
    """A step's record (loss, gradient norm, throughput since the last record, learning rates, model metrics) into
    the log, the trackers' log (``track``, if any; numbers only) and the progress bar."""
    record = {"step": step, "epoch": epoch, "loss": result.loss, "grad_norm": result.grad_norm,
              "tokens_per_second": tokens_per_second, "tokens_seen": tokens_seen, **lrs, **result.metrics}
    log.write(record)
    if track is not None:
        track({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}, step=step)
    bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{next(iter(lrs.values())):.2e}", tok_s=f"{tokens_per_second:.0f}",
                    refresh=False)

def _save(accelerator: Any, guard: NonFiniteGuard, out: Path, step: int, outcome: TrainingOutcome, epoch: int,
          batches_in_epoch: int, total_limit: int | None, optimizer: Any) -> None:
    """Checkpoint ``step`` with the data at ``(epoch, batches_in_epoch)``, after checking the weights (no
    checkpoint holds non-finite weights, so the rotation never drops a good one for a bad one)."""
    guard.check_weights(step, f"the checkpoint of step {step}")
    save_checkpoint(accelerator, out, step, ResumeState.record(outcome, epoch, batches_in_epoch, optimizer),
                    total_limit=total_limit)
    if accelerator.is_main_process:
        print(f"saved checkpoint {out / CHECKPOINTS_DIR}/step_{step:08d}", flush=True)


def _report_interrupt(accelerator: Any, log: JsonlLog, out: Path, command: list[str], step: int,
                      signal_name: str) -> None:
    """After Ctrl-C or SIGTERM at ``step``: print where the last complete checkpoint is and how to resume, log it."""
    done = latest_intact(out)
    if accelerator.is_main_process:
        where = (f"the last checkpoint is {done}.\nresume with: "
                 f"{resume_command(command, done, processes=accelerator.num_processes)}" if done
                 else "no checkpoint was saved yet (set checkpointing_steps; start again with "
                      "--overwrite_output_dir).")
        print(f"\ninterrupted at step {step} ({signal_name}); {where}", flush=True)
    log.write({"step": step, "event": "interrupted", "signal": signal_name})

def train(
    accelerator: Any,
    model: nn.Module,
    train_dataset: Any,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    args: TrainArguments,
    *,
    evaluate: EvalFn | None = None,
    best_metric: tuple[str, str] | None = None,
    on_best: Callable[[nn.Module, int, dict[str, float]], None] | None = None,
    project_name: str = "recipe",
    hparams: dict[str, Any] | None = None,
    start: RunStart | None = None,
    command: list[str] | None = None,
    final_eval: bool = True,
) -> tuple[nn.Module, TrainingOutcome]:
    """Train ``model`` on ``train_dataset``; return the prepared (possibly wrapped) model and the outcome.

    Each optimiser step takes ``gradient_accumulation_steps`` micro-batches of ``per_device_train_batch_size``
    per process. The loss is the sum of token losses over the whole step (all micro-batches, all processes)
    divided by the number of target tokens in it (labels != -100), so accumulation and padding do not change
    the result. ``evaluate(model, step)`` runs at step 0 (``eval_before_training``), every ``eval_steps`` and at
    the end (unless ``final_eval`` is false: a recipe that measures the final model itself), on every process; with
    ``best_metric=(name, "max"|"min")`` each improvement calls ``on_best``.
    Checkpoints every ``checkpointing_steps``; ``resume_from_checkpoint`` restores model, optimiser, schedule,
    random states and the data position, so a resumed run ends with the same weights as an uninterrupted one.
    ``start``: what :func:`prepare_output_dir` returned, if the recipe called it already (else it is called here).
    Ctrl-C or SIGTERM stops the run (``outcome.interrupted``, ``outcome.signal``): the last complete checkpoint
    stays as it was, and the message gives the command (``command``, from :func:`recipe_command`) to resume.

    Every step's loss and gradient norm (computed even without clipping, logged as ``grad_norm``) are checked,
    agreed over all processes: a non-finite one skips the update (``max_bad_steps`` times at most, each logged)
    or stops the run with :class:`NonFiniteError`, naming the step and the last good checkpoint. The weights
    are checked before every checkpoint and at the end, so no checkpoint or final model holds non-finite weights.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    start = start if start is not None else prepare_output_dir(args, accelerator)
    point = start.resume
    out = Path(args.output_dir)
    if start.clear is not None and accelerator.is_main_process:  # --overwrite_output_dir: the earlier run goes now
        _clear(out, final_only=start.clear == "final")
    accelerator.wait_for_everyone()
    log = JsonlLog(out / "log.jsonl", enabled=accelerator.is_main_process)
    dataloader = DataLoader(train_dataset, batch_size=args.per_device_train_batch_size, shuffle=True,
                            collate_fn=collate_fn, drop_last=False)
    optimizer = build_optimizer(model, args)
    forget_prepared(accelerator)  # an earlier training in this process (stage 1) must not be in our checkpoints
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    micro_per_epoch = len(dataloader)
    if micro_per_epoch == 0:
        raise AttnSwapError("the training data gives no batch on this process; add data or use fewer processes.")
    steps_per_epoch = math.ceil(micro_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, args, total_steps)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimiser step, never by Accelerate
    deepspeed = accelerator.distributed_type.name == "DEEPSPEED"  # the engine steps inside backward: no skipping
    scaler = getattr(accelerator, "scaler", None)  # fp16: inf gradients are the loss scaler's business
    command = command or recipe_command(sys.argv[0], None)

    state = load_resume_state(accelerator, point, optimizer, scheduler, args, log, total_steps)
    if args.with_tracking:
        accelerator.init_trackers(project_name, config={k: v for k, v in (hparams or {}).items()
                                                        if isinstance(v, (int, float, str, bool))})
    outcome = state.outcome(total_steps)
    eval_model = model if getattr(accelerator, "is_fsdp2", False) or accelerator.distributed_type.name == "FSDP" \
        else accelerator.unwrap_model(model)
    evaluator = Evaluator(evaluate, eval_model, model, outcome, log, best_metric=best_metric, on_best=on_best,
                          track=accelerator.log if args.with_tracking else None)
    guard = NonFiniteGuard(accelerator, model, log, out, args, command, deepspeed=deepspeed)

    step = state.step
    if step == 0 and args.eval_before_training:
        evaluator.run(0)
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=project_name, dynamic_ncols=True,
               disable=args.disable_progress_bar or not accelerator.is_local_main_process)
    started, window_start, window_tokens, losses = time.perf_counter(), time.perf_counter(), 0, []
    steps_this_run = 0
    epoch, skip = state.epoch, state.batches_in_epoch
    consumed = skip
    try:
        while step < total_steps:
            iterator = epoch_batches(accelerator, dataloader, epoch, skip)
            consumed = skip
            for micro_batches in _chunks(iterator, args.gradient_accumulation_steps):
                consumed += len(micro_batches)
                result = accumulation_step(accelerator, model, micro_batches, max_grad_norm=args.max_grad_norm,
                                           check_grad_norm=scaler is None)
                lrs = learning_rates(optimizer)  # this step's
                if result.bad:
                    guard.bad_step(step + 1, result, outcome.skipped_steps, bar)  # raises past max_bad_steps
                    skip_update(optimizer, scheduler)
                else:
                    apply_update(optimizer, scheduler)
                    losses.append(result.loss)
                step += 1
                steps_this_run += 1
                outcome.step = step
                outcome.tokens_seen += result.tokens
                window_tokens += result.tokens
                if not result.bad and (step % args.logging_steps == 0 or step == total_steps):
                    now = time.perf_counter()
                    _log_step(log, accelerator.log if args.with_tracking else None, bar, step, epoch, result, lrs,
                              tokens_per_second=window_tokens / max(now - window_start, 1e-9),
                              tokens_seen=outcome.tokens_seen)
                    window_start, window_tokens = now, 0
                bar.update(1)
                at_epoch_end = consumed >= micro_per_epoch
                evaluator.periodic(step, args.eval_steps, total_steps)
                if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                    _save(accelerator, guard, out, step, outcome, epoch + 1 if at_epoch_end else epoch,
                          0 if at_epoch_end else consumed, args.checkpoints_total_limit, optimizer)
                if step >= total_steps or (args.stop_after_steps and steps_this_run >= args.stop_after_steps):
                    break
            if args.stop_after_steps and steps_this_run >= args.stop_after_steps and step < total_steps:
                outcome.interrupted = True
                break
            if step >= total_steps:
                break
            epoch, skip = epoch + 1, 0
    except KeyboardInterrupt as exc:
        outcome.interrupted = True
        outcome.signal = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        bar.close()
        _report_interrupt(accelerator, log, out, command, step, outcome.signal)
        return model, outcome
    bar.close()
    outcome.train_loss = losses[-1] if losses else None
    outcome.seconds = time.perf_counter() - started
    if not outcome.interrupted:
        guard.check_weights(step, "the final model")
        if final_eval:
            evaluator.final(step)
        if args.checkpointing_steps and step % args.checkpointing_steps != 0:
            _save(accelerator, guard, out, step, outcome, epoch, consumed, args.checkpoints_total_limit, optimizer)
    return model, outcome

def save_final(accelerator: Any, model: nn.Module, tokenizer: Any, output_dir: str | os.PathLike[str]) -> Path:
    """Save the trained model and tokenizer to ``output_dir`` (config.json keeps the mechanism and its options).
    A PEFT model is saved twice: the adapter (with the mechanism's parameters, ``modules_to_save``, and its
    ``attnswap.json``, so that ``hf_attnswap.load_adapter(base, adapter)`` rebuilds the base) under
    ``<output_dir>/adapter`` and the merged model in ``output_dir``, which loads as a normal swapped model."""
    out = Path(output_dir)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(unwrapped, "merge_and_unload"):  # PEFT; the adapter records the mechanism (attnswap.json)
            from ..adapters import save_adapter

            save_adapter(unwrapped, out / "adapter")
            merged = unwrapped.merge_and_unload()
            merged.save_pretrained(out)
        else:
            unwrapped.save_pretrained(out, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    accelerator.wait_for_everyone()
    return out


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_recipe(main: Callable[[], int]) -> int:
    """Run a recipe's ``main()``; an :class:`~hf_attnswap.errors.AttnSwapError` (bad input, found before compute)
    prints ``error: <what and how to fix>`` and returns 2 instead of a traceback (1 for :class:`NonFiniteError`:
    training diverged). SIGTERM is handled like Ctrl-C (the loop stops, its message says how to resume): 143, and
    130 for Ctrl-C, also outside the loop."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    from ..data.hints import RECIPE_FLAGS, option_names

    try:
        with option_names(RECIPE_FLAGS):  # messages of the shared loaders name --text_column, not text_column=
            return main()
    except AttnSwapError as exc:
        sys.stderr.write(f"error: {exc}\n")  # one write: the processes of a launch do not interleave their lines
        sys.stderr.flush()
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
