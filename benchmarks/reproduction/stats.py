"""Statistics on per-seed numbers: mean and sample std over the finite values, Welch's t, whether two groups
separate and differ measurably, moving averages. Pure functions on plain numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .config import GAP_IN_STDS, MIN_RELATIVE_GAP


def finite(values: Sequence[float | None]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN and infinities dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std with n-1, n) over the finite values; std is 0.0 for one value, both NaN for none."""
    v = finite(values)
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) - mean(b)) / sqrt(var_a/n_a + var_b/n_b): NaN with fewer than 2 values in a group; +-inf when
    both groups have zero spread and different means."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if na < 2 or nb < 2:
        return math.nan
    se = math.sqrt(sa ** 2 / na + sb ** 2 / nb)
    if se == 0:
        return 0.0 if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / se


def separated(a: Sequence[float], b: Sequence[float]) -> int:
    """+1 if every value of ``a`` is above every value of ``b``, -1 if every one is below, 0 if they overlap."""
    fa, fb = finite(a), finite(b)
    if not fa or not fb:
        return 0
    if min(fa) > max(fb):
        return 1
    if max(fa) < min(fb):
        return -1
    return 0


def measurable_difference(a: Sequence[float], b: Sequence[float], *, gap_in_stds: float = GAP_IN_STDS,
                          min_relative_gap: float = MIN_RELATIVE_GAP) -> dict[str, Any]:
    """Whether two groups of per-seed values differ measurably: at least 2 values each, their ranges do not
    overlap, the gap of the means is at least ``gap_in_stds`` times the larger seed std and at least
    ``min_relative_gap`` of the larger |mean|. Returns the numbers behind the decision."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    spread = max(sa, sb) if na and nb else math.nan
    gap = ma - mb
    ratio = abs(gap) / spread if spread and spread > 0 else (math.inf if gap != 0 else 0.0)
    sep = separated(a, b)
    scale = max(abs(ma), abs(mb)) if na and nb else math.nan
    relative = abs(gap) / scale if scale and scale > 0 else (0.0 if gap == 0 else math.inf)
    ok = na >= 2 and nb >= 2 and sep != 0 and ratio >= gap_in_stds and relative >= min_relative_gap
    return {"gap": gap, "seed_std": spread, "gap_in_stds": ratio, "relative_gap": relative, "separated": sep,
            "t": welch_t(a, b), "measurable": bool(ok)}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means of ``window`` consecutive values (fewer at the start); ``window`` 1 returns the values."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
