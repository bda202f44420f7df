"""The JSON files of a reproduction: strict JSON out (NaN and infinities made representable), NaN-tolerant JSON
in, the recipe's ``log.jsonl``, and numbers back from what was written.

Not :func:`benchmarks.common.write_json`: that one writes the timing benchmarks' ``--json`` (indent 2, NaN as
JSON's non-standard ``NaN``, announced on stdout); these files are strict JSON with indent 1 and are written
silently, and their bytes are what the run caches and ``reproduce.json`` have always held."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """JSON with NaN/Infinity allowed (the recipe writes them for diverged runs)."""
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> None:
    """``data`` as strict JSON (:func:`strict_json`), indent 1, to ``path`` (its folder made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(data), indent=1) + "\n")


def strict_json(x: Any) -> Any:
    """NaN/inf -> None/strings so the file is strict JSON."""
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def number(x: Any) -> float:
    """A number from JSON that may hold None / 'inf' / NaN."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(x, math.nan)
    return float(x)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a recipe's ``log.jsonl`` (blank lines skipped); [] when the file does not exist."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows
