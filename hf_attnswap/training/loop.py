"""The training loop both recipes share: Accelerate, token-correct gradient accumulation, evaluation and
checkpoints every N steps, exact resumption, progress bar, JSONL + tracker logs, Ctrl-C safety, final save.

Read top to bottom: :func:`make_accelerator` (checks that the launch matches the machine), :func:`train` (the
loop), :func:`save_final` (model + tokenizer; LoRA: adapter and merged model).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AttnSwapError
from .arguments import TrainArguments
from .checkpoint import CHECKPOINTS_DIR, list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .optim import build_optimizer, build_scheduler

__all__ = ["JsonlLog", "LaunchError", "TrainingOutcome", "check_launch", "make_accelerator", "run_recipe", "save_final", "train"]

IGNORE_INDEX = -100
EvalFn = Callable[[nn.Module, int], dict[str, float]]


class LaunchError(AttnSwapError):
    """The Accelerate launch does not match this machine (GPUs asked for but absent, fp16 on CPU, no DeepSpeed)."""


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
        raise LaunchError("mixed_precision=fp16 needs a CUDA GPU; on CPU use bf16 or no.")
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise LaunchError("this Accelerate config uses DeepSpeed, which is not installed: pip install deepspeed "
                              "(on a CUDA machine), or use the ddp/fsdp config.") from None


def make_accelerator(args: TrainArguments, project_name: str) -> Any:
    """An ``Accelerator`` for ``args`` after :func:`check_launch`; trackers (``with_tracking``) log under
    ``<output_dir>/tracking``. Gradient accumulation is done by :func:`train` itself (token-correct)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    check_launch(args.mixed_precision)
    kwargs: dict[str, Any] = {}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    if args.with_tracking:
        kwargs["log_with"] = args.report_to
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "tracking")),
        **kwargs,
    )
    return accelerator


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


def _prepare_output_dir(args: TrainArguments, accelerator: Any) -> None:
    out = Path(args.output_dir)
    existing = list_checkpoints(out)
    if existing and args.resume_from_checkpoint is None:
        if not args.overwrite_output_dir:
            raise AttnSwapError(
                f"{out} already holds checkpoints (newest: {existing[-1].name}). Resume with "
                f"--resume_from_checkpoint latest, pick another --output_dir, or pass --overwrite_output_dir to delete them.")
        if accelerator.is_main_process:
            shutil.rmtree(out / CHECKPOINTS_DIR)
            (out / "log.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()


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
) -> tuple[nn.Module, TrainingOutcome]:
    """Train ``model`` on ``train_dataset``; return the prepared (possibly wrapped) model and the outcome.

    Each optimiser step takes ``gradient_accumulation_steps`` micro-batches of ``per_device_train_batch_size``
    per process. The loss is the sum of token losses over the whole step (all micro-batches, all processes)
    divided by the number of target tokens in it (labels != -100), so accumulation and padding do not change
    the result. ``evaluate(model, step)`` runs at step 0 (``eval_before_training``), every ``eval_steps`` and at
    the end, on every process; with ``best_metric=(name, "max"|"min")`` each improvement calls ``on_best``.
    Checkpoints every ``checkpointing_steps``; ``resume_from_checkpoint`` restores model, optimiser, schedule,
    random states and the data position, so a resumed run ends with the same weights as an uninterrupted one.
    Ctrl-C stops the run (``outcome.interrupted``): the last complete checkpoint stays as it was.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    _prepare_output_dir(args, accelerator)
    out = Path(args.output_dir)
    log = JsonlLog(out / "log.jsonl", enabled=accelerator.is_main_process)
    dataloader = DataLoader(train_dataset, batch_size=args.per_device_train_batch_size, shuffle=True,
                            collate_fn=collate_fn, drop_last=False)
    optimizer = build_optimizer(model, args)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    micro_per_epoch = len(dataloader)
    if micro_per_epoch == 0:
        raise AttnSwapError("the training data gives no batch on this process; add data or use fewer processes.")
    steps_per_epoch = math.ceil(micro_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, args, total_steps)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimiser step, never by Accelerate

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "tokens_seen": 0, "best": None,
                             "evaluations": []}
    if args.resume_from_checkpoint:
        path = resolve_resume(args.resume_from_checkpoint, out)
        state = load_checkpoint(accelerator, path)
        log.write({"step": state["step"], "event": "resumed", "checkpoint": str(path)})
        if accelerator.is_main_process:
            print(f"resumed from {path} (step {state['step']} of {total_steps})", flush=True)
    if args.with_tracking:
        accelerator.init_trackers(project_name, config={k: v for k, v in (hparams or {}).items()
                                                        if isinstance(v, (int, float, str, bool))})

    outcome = TrainingOutcome(step=state["step"], total_steps=total_steps, interrupted=False, best=state.get("best"),
                              tokens_seen=state["tokens_seen"], evaluations=list(state.get("evaluations", [])))
    eval_model = model if getattr(accelerator, "is_fsdp2", False) or accelerator.distributed_type.name == "FSDP" \
        else accelerator.unwrap_model(model)

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        metrics = evaluate(eval_model, step)
        record = {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}
        outcome.evaluations.append(record)
        log.write(record)
        if args.with_tracking:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if best_metric is not None:
            name, mode = best_metric
            value = metrics[name]
            best = outcome.best
            if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
                outcome.best = {"metric": name, "value": value, "step": step}
                if on_best is not None:
                    on_best(eval_model, step, metrics)
        model.train()

    def checkpoint(step: int, epoch: int, batches_in_epoch: int) -> None:
        save_checkpoint(accelerator, out, step, {"epoch": epoch, "batches_in_epoch": batches_in_epoch,
                                                 "tokens_seen": outcome.tokens_seen, "best": outcome.best,
                                                 "evaluations": outcome.evaluations,
                                                 "total_steps": total_steps},
                        total_limit=args.checkpoints_total_limit)
        if accelerator.is_main_process:
            print(f"saved checkpoint {out / CHECKPOINTS_DIR}/step_{step:08d}", flush=True)

    step = state["step"]
    if step == 0 and args.eval_before_training:
        run_eval(0)
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=project_name, dynamic_ncols=True,
               disable=args.disable_progress_bar or not accelerator.is_local_main_process)
    started, window_start, window_tokens, losses = time.perf_counter(), time.perf_counter(), 0, []
    steps_this_run = 0
    epoch, skip = state["epoch"], state["batches_in_epoch"]
    consumed = skip
    try:
        while step < total_steps:
            saved_rng = _rng_states()
            dataloader.set_epoch(epoch)
            active = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            iterator = iter(active)
            first = next(iterator, None)  # starts the (lazy) iterator, which draws a seed from the global RNG
            _set_rng_states(saved_rng)  # so that where an epoch starts does not shift dropout randomness: exact resume
            iterator = itertools.chain([first] if first is not None else [], iterator)
            consumed = skip
            for micro_batches in _chunks(iterator, args.gradient_accumulation_steps):
                consumed += len(micro_batches)
                targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
                total_targets = int(accelerator.reduce(torch.tensor(targets, device=accelerator.device), "sum"))
                step_loss = torch.zeros((), device=accelerator.device)
                step_tokens = 0
                for i, batch in enumerate(micro_batches):
                    last = i == len(micro_batches) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(model):
                        # loss = (sum of this micro-batch's token losses) / (target tokens of the whole step)
                        loss = model(**batch, num_items_in_batch=max(total_targets, 1)).loss
                        accelerator.backward(loss * accelerator.num_processes)  # DDP averages over processes
                    step_loss += loss.detach()
                    step_tokens += int(batch["input_ids"].numel()) * accelerator.num_processes
                if args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}  # this step's
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_this_run += 1
                outcome.step = step
                outcome.tokens_seen += step_tokens
                window_tokens += step_tokens
                step_loss = float(accelerator.reduce(step_loss, "sum"))
                losses.append(step_loss)
                if step % args.logging_steps == 0 or step == total_steps:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    record = {"step": step, "epoch": epoch, "loss": step_loss, "tokens_per_second": tps,
                              "tokens_seen": outcome.tokens_seen, **lrs}
                    log.write(record)
                    if args.with_tracking:
                        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{next(iter(lrs.values())):.2e}",
                                    tok_s=f"{tps:.0f}", refresh=False)
                    window_start, window_tokens = now, 0
                bar.update(1)
                at_epoch_end = consumed >= micro_per_epoch
                if args.eval_steps and step % args.eval_steps == 0 and step < total_steps:
                    run_eval(step)
                if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                    checkpoint(step, epoch + 1 if at_epoch_end else epoch, 0 if at_epoch_end else consumed)
                if step >= total_steps or (args.stop_after_steps and steps_this_run >= args.stop_after_steps):
                    break
            if args.stop_after_steps and steps_this_run >= args.stop_after_steps and step < total_steps:
                outcome.interrupted = True
                break
            if step >= total_steps:
                break
            epoch, skip = epoch + 1, 0
    except KeyboardInterrupt:
        outcome.interrupted = True
        bar.close()
        done = list_checkpoints(out)
        if accelerator.is_main_process:
            where = (f"the last checkpoint is {done[-1]} (resume with --resume_from_checkpoint latest)" if done
                     else "no checkpoint was saved yet (set checkpointing_steps)")
            print(f"\ninterrupted at step {step}; {where}.", flush=True)
        log.write({"step": step, "event": "interrupted"})
        return model, outcome
    bar.close()
    outcome.train_loss = losses[-1] if losses else None
    outcome.seconds = time.perf_counter() - started
    if not outcome.interrupted:
        if evaluate is not None and not (outcome.evaluations and outcome.evaluations[-1]["step"] == step):
            run_eval(step)
        if args.checkpointing_steps and step % args.checkpointing_steps != 0:
            checkpoint(step, epoch, consumed)
    return model, outcome


def save_final(accelerator: Any, model: nn.Module, tokenizer: Any, output_dir: str | os.PathLike[str]) -> Path:
    """Save the trained model and tokenizer to ``output_dir`` (config.json keeps the mechanism and its options).
    A PEFT model is saved twice: the adapter (with the mechanism's parameters, ``modules_to_save``) under
    ``<output_dir>/adapter`` and the merged model in ``output_dir``, which loads as a normal swapped model."""
    out = Path(output_dir)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(unwrapped, "merge_and_unload"):  # PEFT
            unwrapped.save_pretrained(out / "adapter")
            merged = unwrapped.merge_and_unload()
            merged.save_pretrained(out)
        else:
            unwrapped.save_pretrained(out, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    accelerator.wait_for_everyone()
    return out


def run_recipe(main: Callable[[], int]) -> int:
    """Run a recipe's ``main()``; an :class:`~hf_attnswap.errors.AttnSwapError` (bad input, found before compute)
    prints ``error: <what and how to fix>`` and returns 2 instead of a traceback; Ctrl-C outside the loop returns
    130."""
    import sys

    try:
        return main()
    except AttnSwapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return 130
