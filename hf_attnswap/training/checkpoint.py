"""Resumable checkpoints: Accelerate's full training state plus the recipe's own progress, written atomically and
checked before they are loaded.

Layout: ``<output_dir>/checkpoints/step_00000010/`` holds what ``Accelerator.save_state`` writes (model,
optimizer, scheduler, random states of every process) and ``recipe_state.json`` (step, epoch, batches consumed,
best metric, the number of processes that saved it, and a manifest: every file's name and size). A checkpoint is
first written to a hidden ``.tmp-*`` folder and renamed into place only when complete, so an interrupted run
(Ctrl-C, kill, power loss) never leaves a half-written ``step_*`` folder: the last checkpoint stays intact and
loadable.

Before a resume, :func:`inspect_checkpoint` checks a checkpoint cheaply: ``recipe_state.json`` parses and has the
required keys, every file of the manifest is there with its size, safetensors headers parse, and the files
written by ``torch.save`` are complete zip archives. A damaged checkpoint is reported with the newest intact older
one; ``latest`` skips damaged ones. A missing random state of a process, or another number of processes than the
saving run, makes the resume inexact: refused unless ``allow_inexact_resume``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AttnSwapError

__all__ = ["STATE_FILE", "CheckpointError", "CheckpointReport", "ResumePoint", "checkpoint_path", "inspect_checkpoint",
           "latest_intact", "list_checkpoints", "load_checkpoint", "resolve_resume", "save_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "recipe_state.json"
REQUIRED_KEYS = ("step", "epoch", "batches_in_epoch", "tokens_seen")
RANDOM_STATES = "random_states_{}.pkl"
_STEP_RE = re.compile(r"^step_(\d+)$")
_RANDOM_RE = re.compile(r"^random_states_(\d+)\.pkl$")
_MODEL_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model_fsdp_0", "pytorch_model")


class CheckpointError(AttnSwapError):
    """A resume path that is not a checkpoint of a recipe, a damaged checkpoint, or an output folder that would be
    overwritten."""


def checkpoint_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    """``<output_dir>/checkpoints/step_<step, 8 digits>``."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def _step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``step_N`` folders under ``<output_dir>/checkpoints``, oldest first; not checked (a complete one was
    renamed into place with its ``recipe_state.json``: see :func:`inspect_checkpoint`)."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(s, p) for p in folder.iterdir() if (s := _step_of(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found)]


def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != STATE_FILE}


@dataclass
class CheckpointReport:
    """What :func:`inspect_checkpoint` found: ``corrupt`` is why the checkpoint cannot be loaded (``None``: it can);
    ``inexact`` lists why a resume from it would not be bit-identical (missing random states, another number of
    processes)."""

    path: Path
    state: dict[str, Any] | None = None
    corrupt: str | None = None
    inexact: list[str] = field(default_factory=list)


def _read_state(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{STATE_FILE} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{STATE_FILE} is not valid JSON: {exc}"
    if not isinstance(state, dict):
        return None, f"{STATE_FILE} does not hold a mapping"
    missing = [k for k in REQUIRED_KEYS if not isinstance(state.get(k), int)]
    if missing:
        return None, f"{STATE_FILE} lacks {', '.join(missing)}"
    return state, None


def _readable(file: Path) -> str | None:
    """Why ``file`` cannot be read as what its name says (``None``: it can). Cheap: headers only."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt"):
                pass
        elif file.suffix in (".bin", ".pkl") and file.stat().st_size > 0:
            with zipfile.ZipFile(file):  # torch.save writes a zip archive; a truncated one has no central directory
                pass
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the file is damaged
        return f"{file.name} cannot be read ({type(exc).__name__}: {exc})"
    return None


def inspect_checkpoint(path: str | os.PathLike[str], *, world_size: int | None = None,
                       process_index: int = 0) -> CheckpointReport:
    """Check the checkpoint folder ``path`` before loading it (see the module docstring). ``world_size``: the
    number of processes of the resuming run (a different number than the saving run's is reported as inexact)."""
    path = Path(path)
    report = CheckpointReport(path)
    state, why = _read_state(path)
    if state is None:
        report.corrupt = why
        return report
    report.state = state
    files: dict[str, int] | None = state.get("files") if isinstance(state.get("files"), dict) else None
    saved_world = state.get("world_size") if isinstance(state.get("world_size"), int) else None
    random_names = {RANDOM_STATES.format(r) for r in range(saved_world)} if saved_world else set()
    if files is not None:
        random_names |= {n for n in files if _RANDOM_RE.match(n)}
        for name, size in files.items():
            file = path / name
            if name in random_names:
                continue
            if not file.is_file():
                report.corrupt = f"{name} is missing"
                return report
            if file.stat().st_size != size:
                report.corrupt = f"{name} has {file.stat().st_size} bytes, {size} were written"
                return report
    elif not any((path / n).exists() for n in _MODEL_NAMES):
        report.corrupt = f"no model weights ({' or '.join(_MODEL_NAMES[:2])})"
        return report
    for file in sorted(path.iterdir()):
        if file.is_file() and file.name != STATE_FILE and not _RANDOM_RE.match(file.name):
            why = _readable(file)
            if why:
                report.corrupt = why
                return report
    if not random_names:  # an older checkpoint without world_size: this process's state at least
        random_names = {RANDOM_STATES.format(process_index)}
    for name in sorted(random_names, key=lambda n: int(_RANDOM_RE.match(n).group(1))):
        file = path / name
        if not file.is_file():
            report.inexact.append(f"{name} (the random state of process {_RANDOM_RE.match(name).group(1)}) is missing")
        elif (files is not None and name in files and file.stat().st_size != files[name]) or _readable(file):
            report.inexact.append(f"{name} (the random state of process {_RANDOM_RE.match(name).group(1)}) is damaged")
    if saved_world is not None and world_size is not None and saved_world != world_size:
        report.inexact.append(f"the checkpoint was saved by {saved_world} process{'es' if saved_world != 1 else ''}, "
                              f"this run has {world_size} process{'es' if world_size != 1 else ''} (the data "
                              f"position and random states do not carry over)")
    return report


def latest_intact(output_dir: str | os.PathLike[str], *, before: int | None = None) -> Path | None:
    """The newest checkpoint under ``output_dir`` that :func:`inspect_checkpoint` finds loadable (with a step below
    ``before``, if given), or ``None``."""
    for path in reversed(list_checkpoints(output_dir)):
        step = _step_of(path)
        if before is not None and step is not None and step >= before:
            continue
        if inspect_checkpoint(path).corrupt is None:
            return path
    return None


def _older_hint(path: Path) -> str:
    step = _step_of(path)
    older = latest_intact(path.parent.parent, before=step) if step is not None else None
    if older is not None:
        return f"resume from {older} (the newest intact older checkpoint), or pass --resume_from_checkpoint latest"
    return "there is no intact older checkpoint to resume from; start without resume_from_checkpoint"


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from: its path, the recipe state, why the resume is inexact (allowed by
    ``allow_inexact_resume``), and the damaged newer checkpoints that ``latest`` skipped (with why)."""

    path: Path
    state: dict[str, Any]
    inexact: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def resolve_resume(value: str, output_dir: str | os.PathLike[str], *, world_size: int = 1, process_index: int = 0,
                   allow_inexact: bool = False) -> ResumePoint:
    """The checkpoint named by ``--resume_from_checkpoint`` (a path, or ``latest`` in ``output_dir``: the newest
    intact one), checked by :func:`inspect_checkpoint`. Raises :class:`CheckpointError` for a damaged checkpoint
    (naming the newest intact older one) and for an inexact resume unless ``allow_inexact``."""
    skipped: list[str] = []
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"resume_from_checkpoint=latest, but {Path(output_dir) / CHECKPOINTS_DIR} holds no "
                                  f"checkpoint. Start without resume_from_checkpoint, or pass a checkpoint folder.")
        report = None
        for path in reversed(found):
            candidate = inspect_checkpoint(path, world_size=world_size, process_index=process_index)
            if candidate.corrupt is None:
                report = candidate
                break
            skipped.append(f"skipping checkpoint {path.name}: incomplete or corrupt ({candidate.corrupt})")
        if report is None:
            raise CheckpointError(f"resume_from_checkpoint=latest, but {Path(output_dir) / CHECKPOINTS_DIR} holds no "
                                  f"intact checkpoint: {'; '.join(s.removeprefix('skipping checkpoint ') for s in skipped)}."
                                  f" Start without resume_from_checkpoint (and --overwrite_output_dir).")
    else:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"resume_from_checkpoint: {path.resolve()} does not exist or is not a folder. Pass a "
                                  f"checkpoint folder such as {checkpoint_path(output_dir, 100)}, or 'latest'.")
        if not (path / STATE_FILE).is_file() and not any((path / n).exists() for n in _MODEL_NAMES):
            inside = list_checkpoints(path)
            hint = f" It contains checkpoints; the newest is {inside[-1]}." if inside else ""
            raise CheckpointError(f"resume_from_checkpoint: {path.resolve()} is not a checkpoint of a recipe (no "
                                  f"{STATE_FILE}).{hint} Pass a folder like <output_dir>/checkpoints/step_00000100, or "
                                  f"'latest'.")
        report = inspect_checkpoint(path, world_size=world_size, process_index=process_index)
        if report.corrupt is not None:
            raise CheckpointError(f"checkpoint {path.name} is incomplete or corrupt ({report.corrupt}); "
                                  f"{_older_hint(path)}. ({path.resolve()})")
    if report.inexact and not allow_inexact:
        raise CheckpointError(f"resuming from {report.path} would not be exact: {'; '.join(report.inexact)}. The run "
                              f"would not end with the weights of an uninterrupted run. Pass --allow_inexact_resume to "
                              f"resume anyway (recorded in results.json), or resume from another checkpoint.")
    assert report.state is not None
    return ResumePoint(report.path, report.state, list(report.inexact), skipped)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (main thread) until the block is done: they are delivered right after it.

    The Python-level handlers are swapped for one that only records the signal, then restored, and the recorded
    signals raised again. (Masking the signals with ``pthread_sigmask`` would not do: a process-directed signal is
    then delivered to another thread, such as a tokenizer's or torch's, and Python still runs its handler in the
    main thread inside the block.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old = signal.signal(sig, hold)
        previous[sig] = signal.SIG_DFL if old is None else old
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike[str], step: int, state: dict[str, Any], *,
                    total_limit: int | None = None, keep: set[Path] | None = None) -> Path:
    """Save the full training state for ``step`` atomically; prune to the newest ``total_limit`` checkpoints
    (never those in ``keep``, never the newest intact one). Call on every process. ``recipe_state.json`` records
    the number of processes and a manifest of the files (name and size)."""
    final = checkpoint_path(output_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = {**state, "step": step, "world_size": accelerator.num_processes, "files": _manifest(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        with _signals_deferred():  # Ctrl-C / SIGTERM between the two never leaves no checkpoint for this step
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        if total_limit is not None:
            done = list_checkpoints(output_dir)
            for old in done[: max(len(done) - total_limit, 0)]:
                if old not in (keep or set()) and old != final:
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, point: ResumePoint | Path) -> dict[str, Any]:
    """Restore the training state saved in ``point`` (model, optimizer, registered objects, random states) and
    return the recipe state (``step``, ``epoch``, ``batches_in_epoch`` ...). A failure to load is a
    :class:`CheckpointError` naming the newest intact older checkpoint."""
    if not isinstance(point, ResumePoint):
        point = resolve_resume(str(point), Path(point).parent.parent, world_size=accelerator.num_processes,
                               process_index=accelerator.process_index, allow_inexact=True)
    try:
        accelerator.load_state(str(point.path))
    except Exception as exc:  # noqa: BLE001 - whatever Accelerate, torch or safetensors raise for a damaged file
        raise CheckpointError(f"checkpoint {point.path.name} is incomplete or corrupt (loading it failed: "
                              f"{type(exc).__name__}: {str(exc)[:300]}); {_older_hint(point.path)}.") from None
    return point.state
