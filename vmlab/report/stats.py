"""Statistics over repetitions: one cell is one metric of one (case, job), measured n times.

- ``describe``: n, mean, sample stdev, coefficient of variation, a Student-t confidence interval
  of the mean. One sample has no spread and no interval: it is flagged ``single sample``. A cell
  whose CV is above the threshold is flagged ``noisy``: it is still shown, with the flag, so a
  reader does not take an unstable mean at face value.
- ``compare_cells``: Welch's t-test (no equal-variance assumption), a seeded bootstrap interval
  of the ratio of means, Hedges' g, and a verdict signed by the metric's direction
  (``METRICS[metric].higher_is_better``). With fewer than two samples on either side no
  significance claim is possible: the verdict says ``insufficient samples``.

Input that has no statistics (no samples, NaN or infinity, values whose sums or squares leave
float range) is a ResultError naming the cell; numpy and scipy never warn through to the user:
a figure they cannot compute is ``None``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmlab.errors import ResultError
from vmlab.metrics import METRICS

DEFAULT_CONFIDENCE = 0.95
DEFAULT_NOISY_CV = 0.10
DEFAULT_ALPHA = 0.05
DEFAULT_BOOTSTRAP = 4000
DEFAULT_SEED = 20240601

SINGLE_SAMPLE = "single sample"
NOISY = "noisy"

Verdict = Literal["improvement", "regression", "no significant difference", "insufficient samples"]
IMPROVEMENT: Verdict = "improvement"
REGRESSION: Verdict = "regression"
NO_DIFFERENCE: Verdict = "no significant difference"
INSUFFICIENT: Verdict = "insufficient samples"


@dataclass(frozen=True)
class StatOptions:
    """How cells are summarised and compared."""

    confidence: float = DEFAULT_CONFIDENCE
    """Level of the confidence intervals (mean, ratio of means)."""
    noisy_cv: float = DEFAULT_NOISY_CV
    """A cell whose coefficient of variation is above this fraction is flagged noisy."""
    alpha: float = DEFAULT_ALPHA
    """Significance level of Welch's t-test."""
    bootstrap: int = DEFAULT_BOOTSTRAP
    """Bootstrap resamples for the ratio-of-means interval."""
    seed: int = DEFAULT_SEED
    """Seed of the bootstrap: the same data always gives the same interval."""

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.noisy_cv < 0:
            raise ValueError(f"noisy_cv must be >= 0, got {self.noisy_cv}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap needs at least 100 resamples, got {self.bootstrap}")


@dataclass(frozen=True)
class CellStats:
    """One metric of one (case, job) over its measured repetitions (warm-up excluded)."""

    n: int
    mean: float
    stdev: float | None
    """Sample standard deviation (n - 1); ``None`` for a single sample."""
    cv: float | None
    """stdev / |mean| as a fraction; ``None`` for one sample or a zero mean."""
    ci_low: float | None
    ci_high: float | None
    confidence: float
    noisy: bool
    values: tuple[float, ...]

    @property
    def single(self) -> bool:
        return self.n < 2

    @property
    def flags(self) -> tuple[str, ...]:
        found = []
        if self.single:
            found.append(SINGLE_SAMPLE)
        if self.noisy:
            found.append(NOISY)
        return tuple(found)

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2


def describe(
    values: Sequence[float],
    options: StatOptions | None = None,
    *,
    what: str = "a cell",
    path: Path | None = None,
) -> CellStats:
    """Summarise the repetitions of one cell. ResultError (naming ``what``, stored under
    ``path``) for no values, a non-finite one, or values beyond float range."""
    opts = options or StatOptions()
    xs = tuple(float(v) for v in values)
    hint = (
        "the values are the repetitions' summary.json metrics: fix or remove the repetition "
        "that holds the bad one (cases/<case>/jobs/<job>/r<N>/summary.json)"
    )
    if not xs:
        raise ResultError(f"{what}: no samples to summarise", path=path, hint=hint)
    bad = next((i for i, x in enumerate(xs) if not math.isfinite(x)), None)
    if bad is not None:
        raise ResultError(
            f"{what}: non-finite value {xs[bad]} (sample {bad + 1} of {len(xs)})",
            path=path,
            hint=hint,
        )
    n = len(xs)
    out_of_range = ResultError(
        f"{what}: its mean or interval leaves float range (values up to "
        f"{max(abs(x) for x in xs):.3g})",
        path=path,
        hint=hint,
    )
    try:
        mean = math.fsum(xs) / n
        if n == 1:
            return CellStats(1, mean, None, None, None, None, opts.confidence, False, xs)
        stdev = statistics.stdev(xs)
    except OverflowError as exc:
        raise out_of_range from exc
    from scipy.special import stdtrit  # what scipy.stats.t.ppf calls; stats takes seconds

    t = float(stdtrit(n - 1, (1 + opts.confidence) / 2))
    half = t * stdev / math.sqrt(n)
    if not math.isfinite(mean - half) or not math.isfinite(mean + half):
        raise out_of_range
    cv = stdev / abs(mean) if mean != 0 else None
    noisy = (cv is None and stdev > 0) or (cv is not None and cv > opts.noisy_cv)
    return CellStats(n, mean, stdev, cv, mean - half, mean + half, opts.confidence, noisy, xs)


@contextmanager
def _quiet_numerics() -> Iterator[None]:
    """No floating-point warnings from numpy or scipy: results are checked for finiteness."""
    import numpy as np  # here, not at import: every vmlab command imports this module

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Comparison:
    """A candidate cell against a baseline cell, for one metric."""

    metric: str
    higher_is_better: bool
    baseline: CellStats
    candidate: CellStats
    delta_pct: float | None
    """(candidate - baseline) / |baseline| in percent: the raw change, not "better"."""
    p_value: float | None
    """Welch's t-test; ``None`` with fewer than two samples on a side."""
    alpha: float
    ratio_ci: tuple[float, float] | None
    """Bootstrap interval of mean(candidate) / mean(baseline)."""
    hedges_g: float | None
    """Standardised effect size (candidate - baseline), small-sample corrected."""
    verdict: Verdict

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    @property
    def better(self) -> bool | None:
        """Whether the candidate's mean moved the good way (None: no change or no baseline)."""
        if self.delta_pct is None or self.delta_pct == 0:
            return None
        return (self.delta_pct > 0) == self.higher_is_better


def higher_is_better(metric: str) -> bool:
    try:
        return METRICS[metric].higher_is_better
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}") from None


def welch_p(baseline: CellStats, candidate: CellStats) -> float | None:
    """Two-sided p-value of Welch's t-test; ``None`` if either side has one sample."""
    if baseline.single or candidate.single:
        return None
    if not baseline.stdev and not candidate.stdev:
        # No spread on either side: the means are either exactly equal or certainly different.
        return 1.0 if baseline.mean == candidate.mean else 0.0
    from scipy.special import stdtr  # what scipy.stats.ttest_ind calls; stats takes seconds

    # Welch's t and Welch-Satterthwaite degrees of freedom, as scipy.stats.ttest_ind computes
    # them with equal_var=False.
    with _quiet_numerics():
        try:
            v1 = (candidate.stdev or 0.0) ** 2 / candidate.n
            v2 = (baseline.stdev or 0.0) ** 2 / baseline.n
            t = (candidate.mean - baseline.mean) / math.sqrt(v1 + v2)
            df = (v1 + v2) ** 2 / (v1**2 / (candidate.n - 1) + v2**2 / (baseline.n - 1))
        except (OverflowError, ZeroDivisionError):
            return None
        p = 2 * float(stdtr(df, -abs(t)))
    return _finite(p)


def hedges_g(baseline: CellStats, candidate: CellStats) -> float | None:
    n1, n2 = baseline.n, candidate.n
    if n1 < 2 or n2 < 2 or baseline.stdev is None or candidate.stdev is None:
        return None
    s1, s2 = baseline.stdev, candidate.stdev  # products, not **: those raise on overflow
    pooled = math.sqrt(((n1 - 1) * s1 * s1 + (n2 - 1) * s2 * s2) / (n1 + n2 - 2))
    if pooled == 0 or not math.isfinite(pooled):
        return None
    correction = 1 - 3 / (4 * (n1 + n2) - 9)
    return _finite((candidate.mean - baseline.mean) / pooled * correction)


def bootstrap_ratio_ci(
    baseline: CellStats, candidate: CellStats, options: StatOptions | None = None
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(candidate) / mean(baseline), seeded; None when a
    side has one sample or the ratios leave float range."""
    opts = options or StatOptions()
    if baseline.single or candidate.single:
        return None
    import numpy as np  # here, not at import: every vmlab command imports this module

    rng = np.random.default_rng(opts.seed)
    base = np.asarray(baseline.values, dtype=float)
    cand = np.asarray(candidate.values, dtype=float)
    with _quiet_numerics():  # tiny means: ratios beyond float range (no interval then)
        base_means = rng.choice(base, size=(opts.bootstrap, base.size), replace=True).mean(axis=1)
        cand_means = rng.choice(cand, size=(opts.bootstrap, cand.size), replace=True).mean(axis=1)
        usable = base_means != 0
        ratios = cand_means[usable] / base_means[usable]
    if not ratios.size or not np.isfinite(ratios).all():
        return None
    tail = (1 - opts.confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def welch_ratio_ci(
    baseline: CellStats, candidate: CellStats, options: StatOptions | None = None
) -> tuple[float, float] | None:
    """Interval of mean(candidate) / mean(baseline) on the log scale: the delta method's
    standard error of log(mean) on each side, Welch-Satterthwaite degrees of freedom and a
    Student t quantile, so it excludes 1 about when Welch's t-test is significant. Unlike the
    bootstrap it stays honest at n = 2 or 3 (the bootstrap of 3 values has 10 distinct means).
    None when a side has one sample or a mean that is not positive."""
    opts = options or StatOptions()
    if baseline.single or candidate.single or baseline.mean <= 0 or candidate.mean <= 0:
        return None
    ratio = candidate.mean / baseline.mean
    cells = (baseline, candidate)
    cvs = [(c.stdev or 0.0) / c.mean for c in cells]
    sides = [cv * cv / c.n for cv, c in zip(cvs, cells, strict=True)]  # var(log mean)
    var = sides[0] + sides[1]
    if var == 0:
        return ratio, ratio
    denominator = sum(v * v / (c.n - 1) for v, c in zip(sides, cells, strict=True))
    df = var * var / denominator if denominator > 0 else math.inf
    from scipy.special import stdtrit  # what scipy.stats.t.ppf calls; stats takes seconds

    with _quiet_numerics():
        t = float(stdtrit(df, (1 + opts.confidence) / 2))
    if not math.isfinite(t):
        return None
    try:
        spread = math.exp(t * math.sqrt(var))
    except OverflowError:
        return None
    low, high = ratio / spread, ratio * spread
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def compare_cells(
    baseline: CellStats,
    candidate: CellStats,
    *,
    metric: str,
    options: StatOptions | None = None,
    better_when_higher: bool | None = None,
) -> Comparison:
    """Compare two cells of ``metric``; its direction comes from METRICS unless given."""
    opts = options or StatOptions()
    up = higher_is_better(metric) if better_when_higher is None else better_when_higher
    delta = (candidate.mean - baseline.mean) / abs(baseline.mean) * 100 if baseline.mean else None
    delta = None if delta is None else _finite(delta)
    p = welch_p(baseline, candidate)
    verdict: Verdict
    if p is None:
        verdict = INSUFFICIENT
    elif p < opts.alpha and candidate.mean != baseline.mean:
        verdict = IMPROVEMENT if (candidate.mean > baseline.mean) == up else REGRESSION
    else:
        verdict = NO_DIFFERENCE
    return Comparison(
        metric=metric,
        higher_is_better=up,
        baseline=baseline,
        candidate=candidate,
        delta_pct=delta,
        p_value=p,
        alpha=opts.alpha,
        ratio_ci=bootstrap_ratio_ci(baseline, candidate, opts),
        hedges_g=hedges_g(baseline, candidate),
        verdict=verdict,
    )
