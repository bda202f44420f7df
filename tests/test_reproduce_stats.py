"""benchmarks/reproduction/stats.py and markdown.py: the numbers over seeds and their cells (pure, no models)."""

from __future__ import annotations

import math

import pytest

import _reproduction  # noqa: F401  (benchmarks/ on the path)
from reproduction import markdown, stats


def test_finite_drops_none_nan_and_infinities():
    assert stats.finite([1, None, float("nan"), 2.5, float("inf"), -float("inf")]) == [1.0, 2.5]
    assert stats.finite([]) == []


def test_welch_t_sign_and_degenerate_groups():
    assert stats.welch_t([1.0, 1.0], [2.0, 2.0]) == -math.inf  # no spread, lower mean
    assert stats.welch_t([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert math.isnan(stats.welch_t([1.0, 2.0], [float("nan"), 3.0]))  # one finite value left in b
    assert stats.welch_t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(-3.0 / math.sqrt(2 / 3))


def test_separated_ignores_non_finite_and_needs_both_groups():
    assert stats.separated([5.0, float("nan")], [1.0, 2.0]) == 1
    assert stats.separated([], [1.0]) == 0 and stats.separated([1.0], [None]) == 0
    assert stats.separated([1.0, 2.0], [2.0, 3.0]) == 0  # touching ranges overlap


def test_measurable_difference_numbers_and_thresholds():
    d = stats.measurable_difference([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert d["gap"] == pytest.approx(9.0) and d["seed_std"] == pytest.approx(1.0)
    assert d["gap_in_stds"] == pytest.approx(9.0) and d["relative_gap"] == pytest.approx(9.0 / 11.0)
    assert d["separated"] == 1 and d["measurable"] and d["t"] == pytest.approx(9.0 / math.sqrt(2 / 3))
    # the thresholds are parameters: a stricter one turns the same numbers into "not measurable"
    assert not stats.measurable_difference([10.0, 11.0, 12.0], [1.0, 2.0, 3.0], gap_in_stds=10.0)["measurable"]
    assert not stats.measurable_difference([10.0, 11.0, 12.0], [1.0, 2.0, 3.0], min_relative_gap=0.9)["measurable"]
    # no spread at all: the gap is infinitely many stds; lower values give a negative gap and separated == -1
    d = stats.measurable_difference([1.0, 1.0], [2.0, 2.0])
    assert d["gap_in_stds"] == math.inf and d["separated"] == -1 and d["gap"] == -1.0 and d["measurable"]
    d = stats.measurable_difference([1.0, 1.0], [1.0, 1.0])
    assert d["gap_in_stds"] == 0.0 and d["relative_gap"] == 0.0 and not d["measurable"]
    assert not stats.measurable_difference([], [])["measurable"]


def test_moving_average_window_longer_than_the_values():
    assert stats.moving_average([2.0, 4.0, 6.0], 10) == [2.0, 3.0, 4.0]
    assert stats.moving_average([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]


def test_fmt_num_ranges_and_digits():
    assert markdown.fmt_num(-float("inf")) == "-inf" and markdown.fmt_num(float("nan")) == "n/a"
    assert markdown.fmt_num(0.5) == "0.500" and markdown.fmt_num(0.5, 2) == "0.50"
    assert markdown.fmt_num(5.0) == "5.00" and markdown.fmt_num(99.99) == "99.99"
    assert markdown.fmt_num(100.0) == "100.0" and markdown.fmt_num(99999.0) == "99999.0"
    assert markdown.fmt_num(1e5) == "1.00e+05" and markdown.fmt_num(-2e-4) == "-2.00e-04"
    assert markdown.fmt_num(3, 1) == "3.0"  # ints too; at least one digit


def test_fmt_pm_digits_and_all_missing():
    assert markdown.fmt_pm([1.0, 2.0], 1) == "1.5 ± 0.7"
    assert markdown.fmt_pm([]) == "n/a"
    assert markdown.fmt_pm([float("inf"), 2.0]) == "2.00 (1 of 2 not finite)"


def test_table_cells_and_empty_rows():
    assert markdown.table(["x"], []) == "| x |\n| --- |"
    assert markdown.table(["a", "b"], [[None, 1.5], ["y", ""]]).splitlines()[2:] == ["| None | 1.5 |", "| y |  |"]
