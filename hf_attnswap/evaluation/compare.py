"""Side by side: evaluate one model under several attention mechanisms in one run, print one table, write JSON.

The mechanisms come as :class:`~hf_attnswap.spec.AttnSpec` (``--attn sdpa,softmax,dagpam:lambda_init=0.1`` parsed by
:func:`hf_attnswap.spec.parse_attn_specs`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..registry import is_mechanism, parameter_overhead
from ..spec import AttnSpec


def compare(
    model_name_or_path: str,
    specs: list[AttnSpec],
    evaluate: Callable[[Any, Any], dict[str, Any]],
    *,
    tokenizer: Any = None,
    load_kwargs: dict[str, Any] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Load ``model_name_or_path`` under each spec and run ``evaluate(model, tokenizer) -> metrics``.

    Returns one row per spec: ``{"model", "attn", "mechanism", "options" (all, defaults filled in),
    "parameters_added", **metrics, "seconds"}``. Models are loaded one at a time and freed after use.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    rows = []
    for spec in specs:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, **spec.load_kwargs(), **(load_kwargs or {})).eval()
        metrics = evaluate(model, tokenizer)
        stored = getattr(model.config, "attnswap", None) if is_mechanism(spec.name) else None
        row = {
            "model": str(model_name_or_path),
            "attn": spec.label,
            "mechanism": spec.name,
            "options": {k: v for k, v in (stored or {}).items() if k != "mechanism"},
            "parameters_added": parameter_overhead(model)["added"],
            **metrics,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        if on_result is not None:
            on_result(row)
        del model
    return rows


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as one rich table; ``columns`` are ``(key, header, format)`` such as ``("ppl", "ppl", "{:.2f}")``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(title=title)
    table.add_column("attention", no_wrap=True)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else fmt.format(value))
        table.add_row(row["attn"], *cells)
    console.print(table)


def write_json(path: str | Path, kind: str, rows: list[dict[str, Any]], data: dict[str, Any]) -> Path:
    """Write ``{"kind", "data", "results", "environment"}`` to ``path``."""
    import torch
    import transformers

    payload = {
        "kind": kind,
        "data": data,
        "results": rows,
        "environment": {
            "hf_attnswap": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
