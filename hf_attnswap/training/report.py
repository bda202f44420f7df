"""What a finished recipe writes and shows: ``results.json``, the side-by-side table of several runs, the Hub push."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ..errors import AttnSwapError
from ..evaluation.compare import print_table
from ..spec import AttnSpec
from .arguments import ModelArguments, TrainArguments
from .loop import TrainingOutcome

__all__ = ["RESULTS_FILE", "compare_runs", "git_revision", "push_final", "write_results"]

RESULTS_FILE = "results.json"


def git_revision(where: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of the working tree this code runs from, or of the one holding ``where`` (``None`` outside a
    checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, timeout=10,
                             cwd=Path(where) if where is not None else Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What ran a recipe: platform, torch version, CPU count and vector capability (``AVX2``, ``AVX512``...: whether
    bf16 is fast there), the CUDA device if any. Timings are comparable only between equal machines."""
    import torch

    return {"platform": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(output_dir: Path, outcome: TrainingOutcome, *, spec: AttnSpec, model_args: ModelArguments,
                  data_source: str, metric: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<output_dir>/results.json``: the run's attention, evaluations, first and final ``metric``, best,
    steps, tokens, time, machine and git revision. Returns the dict."""
    evals = [e for e in outcome.evaluations if f"eval/{metric}" in e]
    results = {
        "attn": spec.label,
        "mechanism": spec.name,
        "options": spec.options,
        "model": model_args.model_name_or_path or model_args.model_type or model_args.config_name,
        "from_scratch": model_args.model_name_or_path is None,
        "data": data_source,
        "metric": metric,
        "first_eval": evals[0][f"eval/{metric}"] if evals else None,
        "first_eval_step": evals[0]["step"] if evals else None,
        "final_eval": evals[-1][f"eval/{metric}"] if evals else None,
        "best": outcome.best,
        "evaluations": outcome.evaluations,
        "steps": outcome.step,
        "tokens_seen": outcome.tokens_seen,
        "train_loss": outcome.train_loss,
        "seconds": outcome.seconds,
        "skipped_steps": outcome.skipped_steps,  # non-finite steps whose update was skipped (max_bad_steps)
        "inexact_resume": outcome.inexact_resume,  # why a resume was not exact (allow_inexact_resume); [] if none
        "machine": machine(),
        "git_revision": git_revision(),
        **(extra or {}),
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def compare_runs(folders: list[str | os.PathLike[str]], *, title: str | None = None) -> list[dict[str, Any]]:
    """Print one table of several finished runs (their ``results.json``) side by side; return the rows."""
    rows = []
    for folder in folders:
        path = Path(folder) / RESULTS_FILE
        if not path.is_file():
            raise AttnSwapError(f"{path} not found: {folder} is not a finished recipe run (results.json is written "
                                f"at the end of a run).")
        r = json.loads(path.read_text())
        rows.append({"run": Path(folder).name, "attn": r["attn"], "first": r["first_eval"], "final": r["final_eval"],
                     "steps": r["steps"], "tokens": r["tokens_seen"], "seconds": r["seconds"],
                     "tokens_per_second": r["tokens_seen"] / max(r["seconds"], 1e-9), "metric": r["metric"]})
    metric = rows[0]["metric"] if rows else "ppl"
    print_table(title or f"Validation {metric} before and after training", rows, [
        ("run", "run", "{}"), ("first", f"{metric} at step 0", "{:.4g}"), ("final", f"{metric} at the end", "{:.4g}"),
        ("steps", "steps", "{:,}"), ("tokens", "train tokens", "{:,}"), ("tokens_per_second", "train tok/s", "{:.0f}"),
        ("seconds", "s", "{:.0f}"),
    ])
    return rows


def push_final(output_dir: Path, args: TrainArguments, *, base_model: str | None,
               eval_results: list[dict[str, Any]] | None) -> str | Path:
    """Push the saved model in ``output_dir`` (and its tokenizer) with a model card (:func:`hf_attnswap.push_to_hub`).
    ``base_model`` is linked on the card only when it is a Hub id (not a local folder or an offline asset)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub import push_to_hub

    from ..data.assets import ASSET_ALIASES

    if base_model is not None and (base_model in ASSET_ALIASES or Path(base_model).expanduser().exists()):
        base_model = None  # a local folder or offline asset has no Hub id to link to
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    url = push_to_hub(model, args.hub_model_id, tokenizer=tokenizer, base_model=base_model, eval_results=eval_results,
                      private=args.hub_private, endpoint=args.hub_endpoint)
    print(f"pushed {output_dir} to {args.hub_model_id}: {url}", flush=True)
    return url
