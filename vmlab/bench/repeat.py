"""When a job has been repeated enough: the stopping rule of ``repeat: {min, max, ci_pct, until}``.

After each measured repetition the rule looks at the job's values of its stop metric (total
IOPS for fio, received bit/s for iperf3; :func:`vmlab.metrics.stop_metric`) and says whether
to go on. Never before ``min``, always at ``max``; in between:

- ``until: ci`` — the Student-t interval of the mean (``vmlab.report.stats.describe``, the
  interval the report prints) is within ±``ci_pct`` % of the mean;
- ``until: significant`` — for the first configuration (the reference the others are compared
  with) the same; for every other one, the interval of its mean's ratio to the reference's
  (:func:`vmlab.report.stats.welch_ratio_ci`) excludes 1 (the configurations differ) or is
  within ±``ci_pct`` % of the ratio (any difference is smaller than the margin asked).

The decision is a :class:`Stop`: how many repetitions it took and why, as the run directory
stores it (``jobs/<job>/repeat.json``) and the report shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vmlab.report.stats import CellStats, describe, welch_ratio_ci
from vmlab.spec import Repeat

Reason = Literal["fixed", "ci", "differs", "within-margin", "max"]


@dataclass(frozen=True)
class Stop:
    """Why a job's repetitions ended."""

    repetitions: int
    reason: Reason
    detail: str
    """One line for a person: the figures that decided."""
    ci_pct: float | None = None
    """The half-width reached, in % of the mean (or of the ratio, against a reference)."""
    ratio_ci: tuple[float, float] | None = None
    against: str | None = None
    """The reference configuration of ``until: significant``."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio_ci"] = list(self.ratio_ci) if self.ratio_ci else None
        return data


def _half_pct(cell: CellStats) -> float | None:
    half = cell.half_width
    return None if half is None or cell.mean == 0 else half / abs(cell.mean) * 100


@dataclass(frozen=True)
class _Ratio:
    """mean / the reference's mean, with its interval."""

    against: str
    ratio: float
    low: float
    high: float

    @property
    def half_pct(self) -> float:
        return (self.high - self.low) / 2 / self.ratio * 100

    def __str__(self) -> str:
        return f"× {self.against} {self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def stop(self, n: int, reason: Reason, detail: str) -> Stop:
        return Stop(n, reason, detail, self.half_pct, (self.low, self.high), self.against)


def _ratio(cell: CellStats, reference: CellStats, against: str) -> _Ratio | None:
    interval = welch_ratio_ci(reference, cell)
    if interval is None or reference.mean == 0:
        return None
    return _Ratio(against, cell.mean / reference.mean, *interval)


def decide(
    rule: Repeat,
    values: Sequence[float],
    *,
    reference: Sequence[float] | None = None,
    against: str | None = None,
) -> Stop | None:
    """Stop after ``values`` (the measured repetitions so far), or None to repeat once more.

    ``reference`` holds the reference configuration's values of the same job under ``until:
    significant`` (None for the reference itself, or when it has none: the CI rule then)."""
    n = len(values)
    if n < rule.min:
        return None
    if rule.fixed or rule.ci_pct is None:
        return Stop(n, "fixed", f"{n} repetition{'s' if n != 1 else ''}, as the spec asks")
    target = rule.ci_pct
    cell = describe(values, what="the stop metric")
    if rule.until == "significant" and reference is not None and len(reference) >= 2:
        ratio = _ratio(cell, describe(reference, what="the reference"), against or "reference")
        if ratio is not None and (ratio.low > 1 or ratio.high < 1):
            return ratio.stop(n, "differs", f"{ratio} excludes 1")
        if ratio is not None and ratio.half_pct <= target:
            return ratio.stop(n, "within-margin", f"{ratio} ±{ratio.half_pct:.2f}% ≤ ±{target:g}%")
        if n < rule.max:
            return None
        if ratio is None:
            return Stop(n, "max", "max reached: no ratio interval", against=against)
        return ratio.stop(
            n, "max", f"max reached: {ratio} ±{ratio.half_pct:.2f}% > ±{target:g}%, includes 1"
        )
    half = _half_pct(cell)
    if half is not None and half <= target:
        return Stop(n, "ci", f"mean ±{half:.2f}% ≤ ±{target:g}%", ci_pct=half)
    if n < rule.max:
        return None
    reached = "no interval" if half is None else f"mean ±{half:.2f}%"
    return Stop(n, "max", f"max reached: {reached} > ±{target:g}%", ci_pct=half)
