"""Markdown building blocks of the report: numbers, mean ± std over seeds, tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .stats import mean_std


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number for a table: NaN/None -> 'n/a', inf -> 'inf', huge or tiny -> scientific, else fixed."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    if a >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}f}" if a < 1 else f"{x:.{max(digits - 1, 1)}f}"


def fmt_pm(values: Sequence[float | None], digits: int = 3) -> str:
    """'mean ± std' over the finite values, with a note when some were not finite."""
    m, s, n = mean_std(values)
    bad = len(values) - n
    text = "n/a" if n == 0 else (fmt_num(m, digits) if n == 1 else f"{fmt_num(m, digits)} ± {fmt_num(s, digits)}")
    return text + (f" ({bad} of {len(values)} not finite)" if bad else "")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (cells as ``str`` gives them, not padded)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
