"""Resumable checkpoints: Accelerate's full training state plus the recipe's own progress, written atomically.

Layout: ``<output_dir>/checkpoints/step_00000010/`` holds what ``Accelerator.save_state`` writes (model,
optimizer, scheduler, random states of every process) and ``recipe_state.json`` (step, epoch, batches consumed,
best metric). A checkpoint is first written to a hidden ``.tmp-*`` folder and renamed into place only when
complete, so an interrupted run (Ctrl-C, kill, power loss) never leaves a half-written ``step_*`` folder: the
last checkpoint stays intact and loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import AttnSwapError

__all__ = ["STATE_FILE", "CheckpointError", "checkpoint_path", "list_checkpoints", "load_checkpoint",
           "resolve_resume", "save_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "recipe_state.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(AttnSwapError):
    """A resume path that is not a checkpoint of a recipe, or an output folder that would be overwritten."""


def checkpoint_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    """``<output_dir>/checkpoints/step_<step, 8 digits>``."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(value: str, output_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint folder named by ``--resume_from_checkpoint`` (a path, or ``latest`` in ``output_dir``)."""
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"resume_from_checkpoint=latest, but {Path(output_dir) / CHECKPOINTS_DIR} holds no "
                                  f"checkpoint. Start without resume_from_checkpoint, or pass a checkpoint folder.")
        return found[-1]
    path = Path(value).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {path.resolve()} does not exist or is not a folder. Pass a "
                              f"checkpoint folder such as {checkpoint_path(output_dir, 100)}, or 'latest'.")
    if not (path / STATE_FILE).is_file():
        inside = list_checkpoints(path)
        hint = f" It contains checkpoints; the newest is {inside[-1]}." if inside else ""
        raise CheckpointError(f"resume_from_checkpoint: {path.resolve()} is not a checkpoint of a recipe (no "
                              f"{STATE_FILE}).{hint} Pass a folder like <output_dir>/checkpoints/step_00000100, or 'latest'.")
    return path


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike[str], step: int, state: dict[str, Any], *,
                    total_limit: int | None = None, keep: set[Path] | None = None) -> Path:
    """Save the full training state for ``step`` atomically; prune to the newest ``total_limit`` checkpoints
    (never those in ``keep``). Call on every process."""
    final = checkpoint_path(output_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
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


def load_checkpoint(accelerator: Any, path: Path) -> dict[str, Any]:
    """Restore the training state saved in ``path`` (model, optimizer, registered objects, random states) and
    return the recipe state (``step``, ``epoch``, ``batches_in_epoch`` ...)."""
    state = json.loads((path / STATE_FILE).read_text())
    accelerator.load_state(str(path))
    return state
