"""Statistics of cells and comparisons, checked against hand-computed values."""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

import pytest
from runs_fixture import make_run, normal
from scipy import stats as sps

from vmlab.errors import ResultError
from vmlab.report.compare import compare_runs
from vmlab.report.model import build_run
from vmlab.report.stats import (
    IMPROVEMENT,
    INSUFFICIENT,
    NO_DIFFERENCE,
    REGRESSION,
    StatOptions,
    bootstrap_ratio_ci,
    compare_cells,
    describe,
    hedges_g,
    welch_p,
)
from vmlab.results.index import scan_run


def test_describe_by_hand() -> None:
    cell = describe([10.0, 12.0, 14.0])
    assert cell.n == 3
    assert cell.mean == 12.0
    assert cell.stdev == pytest.approx(2.0)  # sample stdev: sqrt(((-2)^2 + 0 + 2^2) / 2)
    assert cell.cv == pytest.approx(2.0 / 12.0)
    # t(0.975, df=2) = 4.302652729911275 (table value); half-width = t * s / sqrt(n)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)
    assert cell.ci_low == pytest.approx(12.0 - half)
    assert cell.ci_high == pytest.approx(12.0 + half)
    assert cell.noisy  # CV 16.7% > 10%
    assert cell.flags == ("noisy",)


def test_confidence_level_changes_the_interval() -> None:
    wide = describe([10.0, 12.0, 14.0], StatOptions(confidence=0.99))
    narrow = describe([10.0, 12.0, 14.0], StatOptions(confidence=0.80))
    assert wide.half_width is not None and narrow.half_width is not None
    assert wide.half_width > narrow.half_width
    # t(0.995, 2) = 9.924843200918276
    assert wide.half_width == pytest.approx(9.924843200918276 * 2 / math.sqrt(3))


def test_single_sample_has_no_interval() -> None:
    cell = describe([42.0])
    assert cell.single
    assert (cell.stdev, cell.cv, cell.ci_low, cell.ci_high) == (None, None, None, None)
    assert cell.flags == ("single sample",)
    assert not cell.noisy


def test_noisy_threshold_is_configurable() -> None:
    values = [100.0, 120.0, 80.0]  # CV = 20%
    assert describe(values).noisy
    assert not describe(values, StatOptions(noisy_cv=0.25)).noisy
    assert not describe([100.0, 101.0, 99.0]).noisy


def test_describe_rejects_empty_and_non_finite_input_as_result_errors() -> None:
    with pytest.raises(ResultError, match="no samples") as info:
        describe([], what="read_iops of virtio-blk/latency")
    assert "read_iops of virtio-blk/latency" in str(info.value) and info.value.hint
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ResultError, match="non-finite") as info:
            describe([1.0, bad])
        assert info.value.hint


def test_values_beyond_float_range_are_a_result_error_not_an_overflow() -> None:
    with pytest.raises(ResultError, match="float range"):
        describe([1.7e308, 1.7e308])
    with pytest.raises(ResultError, match="float range"):
        describe([1.7e308, -1.7e308, 1.7e308])


@pytest.mark.parametrize(
    ("baseline", "candidate"),
    [
        ([100.0, 100.0, 100.00000000001], [100.0, 100.0, 100.0]),  # catastrophic cancellation
        ([1e-320, 2e-320, 3e-320], [1.0, 2.0, 3.0]),  # a ratio of means beyond float range
        ([1.0, 2.0, 3.0], [1e-320, 2e-320, 3e-320]),
        ([1e200, -1e200, 1e200], [2e200, -2e200, 2e200]),  # squares beyond float range
    ],
)
def test_comparisons_of_extreme_samples_neither_warn_nor_raise(
    baseline: list[float], candidate: list[float]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy/scipy RuntimeWarning fails the test
        result = compare_cells(describe(baseline), describe(candidate), metric="read_iops")
    for value in (result.p_value, result.hedges_g, *(result.ratio_ci or ())):
        assert value is None or math.isfinite(value)


def test_a_stored_nan_fails_report_and_compare_with_the_cell_named(tmp_path: Path) -> None:
    make_run(tmp_path, "good", {("virtio-blk", "latency"): {"read_iops": [1.0, 2.0]}})
    bad = make_run(tmp_path, "bad", {("virtio-blk", "latency"): {"read_iops": [math.nan, 2.0]}})
    record = scan_run(bad)
    with pytest.raises(ResultError) as info:
        build_run(record, StatOptions())
    assert "read_iops" in str(info.value) and "virtio-blk/latency" in str(info.value)
    assert info.value.path == record.path
    with pytest.raises(ResultError, match="virtio-blk/latency"):
        compare_runs(scan_run(tmp_path / "good"), [record])


def test_welch_matches_the_formula() -> None:
    a, b = [10.0, 11.0, 12.0, 13.0], [14.0, 17.0, 20.0]
    ca, cb = describe(a), describe(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(b) - statistics.mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    expected = 2 * sps.t.sf(abs(t), df)
    assert welch_p(ca, cb) == pytest.approx(expected)
    # not Student's pooled test, which gives another p here
    pooled = sps.ttest_ind(b, a, equal_var=True).pvalue
    assert not math.isclose(expected, pooled, rel_tol=1e-3)


def test_hedges_g_by_hand() -> None:
    a, b = [10.0, 12.0, 14.0], [16.0, 18.0, 20.0]
    # pooled sd = 2, d = 6 / 2 = 3, J = 1 - 3 / (4 * 6 - 9) = 0.8
    assert hedges_g(describe(a), describe(b)) == pytest.approx(3.0 * 0.8)
    assert hedges_g(describe(b), describe(a)) == pytest.approx(-2.4)


def test_same_distribution_is_no_significant_difference() -> None:
    base = describe(normal(10_000, 300, 8, seed=1))
    cand = describe(normal(10_000, 300, 8, seed=2))
    result = compare_cells(base, cand, metric="read_iops")
    assert result.verdict == NO_DIFFERENCE
    assert result.p_value is not None and result.p_value > 0.05
    assert not result.significant


def test_lower_iops_is_a_regression_lower_latency_an_improvement() -> None:
    base = describe(normal(10_000, 200, 6, seed=3))
    cand = describe(normal(8_000, 200, 6, seed=4))
    iops = compare_cells(base, cand, metric="read_iops")
    assert iops.verdict == REGRESSION
    assert iops.significant
    assert iops.delta_pct == pytest.approx((cand.mean - base.mean) / base.mean * 100)
    assert iops.better is False
    latency = compare_cells(base, cand, metric="read_lat_p99_ns")
    assert latency.verdict == IMPROVEMENT
    assert latency.better is True
    assert latency.hedges_g is not None and latency.hedges_g < -5


def test_one_sample_on_a_side_claims_nothing() -> None:
    base = describe([10_000.0])
    cand = describe([5_000.0, 5_100.0, 4_900.0])
    result = compare_cells(base, cand, metric="read_iops")
    assert result.verdict == INSUFFICIENT
    assert result.p_value is None
    assert result.ratio_ci is None
    assert result.hedges_g is None
    assert result.delta_pct == pytest.approx(-50.0)


def test_bootstrap_is_seeded_and_brackets_the_ratio() -> None:
    base = describe(normal(1000, 30, 10, seed=5))
    cand = describe(normal(800, 30, 10, seed=6))
    first = bootstrap_ratio_ci(base, cand)
    again = bootstrap_ratio_ci(base, cand)
    assert first == again
    assert first is not None
    low, high = first
    assert low < cand.mean / base.mean < high
    assert 0.7 < low < high < 0.9
    other_seed = bootstrap_ratio_ci(base, cand, StatOptions(seed=7))
    assert other_seed != first


def test_no_spread_on_either_side() -> None:
    same = compare_cells(describe([5.0, 5.0]), describe([5.0, 5.0]), metric="read_iops")
    assert same.p_value == 1.0 and same.verdict == NO_DIFFERENCE
    apart = compare_cells(describe([5.0, 5.0]), describe([6.0, 6.0]), metric="read_iops")
    assert apart.p_value == 0.0 and apart.verdict == IMPROVEMENT


def test_unknown_metric_needs_a_direction() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        compare_cells(describe([1.0, 2.0]), describe([1.0, 2.0]), metric="bogus")
    result = compare_cells(
        describe([1.0, 1.1]), describe([2.0, 2.1]), metric="bogus", better_when_higher=False
    )
    assert result.verdict == REGRESSION


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        StatOptions(confidence=1.5)
    with pytest.raises(ValueError):
        StatOptions(alpha=0)
    with pytest.raises(ValueError):
        StatOptions(bootstrap=10)


@pytest.mark.parametrize(
    ("baseline", "candidate"),
    [
        ([100.0, 102.0, 99.0], [110.0, 111.5, 108.0, 109.0]),
        ([5.0, 5.1], [5.0, 5.2, 5.3, 4.9, 5.05]),
        ([1e-3, 2e-3, 1.5e-3, 1.2e-3], [1.1e-3, 2.1e-3, 1.4e-3]),
    ],
)
def test_welch_p_is_scipy_ttest_ind_without_importing_scipy_stats(
    baseline: list[float], candidate: list[float]
) -> None:

    expected = float(sps.ttest_ind(candidate, baseline, equal_var=False).pvalue)
    assert welch_p(describe(baseline), describe(candidate)) == pytest.approx(expected, rel=1e-9)
    half = float(sps.t.ppf(0.975, len(baseline) - 1)) * statistics.stdev(baseline)
    cell = describe(baseline)
    assert cell.ci_high - cell.mean == pytest.approx(half / math.sqrt(len(baseline)))  # type: ignore[operator]
