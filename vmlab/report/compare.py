"""Compare runs cell by cell, and gate on acceptance rules.

Matching. A cell is one (case id, job name). A candidate run's cell is compared with the
baseline's cell of the same case id and job name - also when the two runs come from different
specs: case ids are readable labels of the axis values (``virtio-blk_iothread``), so the same
configuration gets the same id in both, and a cell that exists on one side only is listed as
unmatched, never guessed. One exception: when no cell matches that way and both runs have exactly
one case (typically two imports, whose single case is named after its folder), cells are matched
by job name alone. Cells still without a partner are then matched on the fio parameters of their
job (``rw``, ``bs``, ``iodepth``, ``numjobs``, fio's defaults where a job does not say; in the same
case, or ignoring cases when each run has one): ``randread-qd1-nj1`` of one import finds
``randread-qd1`` of another. A parameter set that two jobs of one run share matches nothing.

Rules. ``METRIC:LIMIT%`` bounds the change of a metric's mean from baseline to candidate:

- ``read_iops:-5%``: read IOPS may not drop by more than 5 %;
- ``read_lat_p99_ns:+10%``: p99 read latency may not rise by more than 10 %;
- no sign (``read_iops:5%``): the limit applies in the metric's worse direction.

A rule fails on a cell only when the change is beyond the limit *and* Welch's test finds the
difference significant (p < alpha). Beyond the limit without significance passes (the message
says so); beyond the limit with a single sample on a side is ``inconclusive``: no claim can be
made, and ``--fail-inconclusive`` turns that into a failure. Rules also come from a YAML or JSON
file: a list of ``"metric:limit%"`` strings, or a mapping ``{metric: "-5%"}``, either at the top
level or under a ``rules`` key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vmlab.errors import SpecError
from vmlab.metrics import METRICS
from vmlab.report.stats import (
    INSUFFICIENT,
    Comparison,
    StatOptions,
    compare_cells,
    describe,
)
from vmlab.results.rundir import RunRecord
from vmlab.sizes import parse_size

DEFAULT_METRICS = (
    "total_iops",
    "read_iops",
    "write_iops",
    "mixed_iops",
    "total_bw_kib_s",
    "read_lat_mean_ns",
    "write_lat_mean_ns",
    "mixed_lat_mean_ns",
    "read_clat_mean_ns",
    "write_clat_mean_ns",
    "mixed_clat_mean_ns",
    "read_lat_p99_ns",
    "write_lat_p99_ns",
    "mixed_lat_p99_ns",
)

_RULE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*:\s*([+-]?)\s*(\d+(?:\.\d*)?)\s*%?\s*$")
_RULE_HINT = (
    "write METRIC:LIMIT%, e.g. read_iops:-5% (may drop at most 5%) or read_lat_p99_ns:+10% "
    "(may rise at most 10%); metric names are those of `vmlab compare --help`"
)

RuleStatus = Literal["pass", "fail", "inconclusive"]


def check_metric(metric: str, *, file: Path | None = None) -> str:
    """A metric name from METRICS, or SpecError naming the closest ones."""
    if metric in METRICS:
        return metric
    close = difflib.get_close_matches(metric, list(METRICS), n=3)
    raise SpecError(
        f"unknown metric {metric!r}",
        file=file,
        hint=f"did you mean {', '.join(close)}?" if close else "known: " + ", ".join(METRICS),
    )


@dataclass(frozen=True)
class Rule:
    """The mean of ``metric`` may not move by more than ``limit_pct`` in ``direction``."""

    metric: str
    limit_pct: float
    direction: int
    """+1: a rise is bounded; -1: a drop is bounded."""
    text: str

    def breached(self, delta_pct: float) -> bool:
        return self.direction * delta_pct > self.limit_pct

    @property
    def label(self) -> str:
        sign = "+" if self.direction > 0 else "-"
        return f"{self.metric}:{sign}{self.limit_pct:g}%"


def parse_rule(text: str, *, file: Path | None = None) -> Rule:
    """``"read_iops:-5%"`` -> Rule. Raises SpecError."""
    match = _RULE.match(text)
    if match is None:
        raise SpecError(f"invalid rule {text!r}", file=file, hint=_RULE_HINT)
    metric = check_metric(match.group(1), file=file)
    sign = match.group(2)
    if sign:
        direction = 1 if sign == "+" else -1
    else:
        direction = -1 if METRICS[metric].higher_is_better else 1
    return Rule(metric, float(match.group(3)), direction, text.strip())


def load_rules(path: Path) -> list[Rule]:
    """Rules from a YAML or JSON file (see the module docstring)."""
    import yaml  # only with --rules: not at start-up of every `vmlab compare`

    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read rules: {exc.strerror or exc}", file=path) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML or JSON: {exc}", file=path) from exc
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    texts: list[str] = []
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        texts = list(data)
    elif isinstance(data, dict) and all(isinstance(v, str | int | float) for v in data.values()):
        texts = [f"{k}:{v}" for k, v in data.items()]
    else:
        raise SpecError(
            f"{path}: expected a list of 'metric:limit%' strings or a mapping metric -> limit",
            file=path,
            hint="e.g.\nrules:\n  - read_iops:-5%\n  - read_lat_p99_ns:+10%",
        )
    return [parse_rule(t, file=path) for t in texts]


@dataclass(frozen=True)
class CellComparison:
    """One metric of one matched cell: candidate run vs baseline run."""

    candidate: str
    case_id: str
    job: str
    comparison: Comparison
    baseline_case: str
    baseline_job: str = ""
    """The baseline's job, when it has another name (cells matched on parameters)."""

    @property
    def pair_label(self) -> str:
        """``job``, or ``job = baseline job`` when the two are named differently."""
        other = self.baseline_job
        return self.job if not other or other == self.job else f"{self.job} = {other}"

    @property
    def metric(self) -> str:
        return self.comparison.metric


@dataclass(frozen=True)
class RuleCheck:
    rule: Rule
    candidate: str
    case_id: str
    job: str
    status: RuleStatus
    message: str
    comparison: Comparison


def evaluate_rule(
    rule: Rule, comparison: Comparison, *, candidate: str, case_id: str, job: str
) -> RuleCheck:
    delta = comparison.delta_pct

    def check(status: RuleStatus, message: str) -> RuleCheck:
        return RuleCheck(rule, candidate, case_id, job, status, message, comparison)

    if delta is None:
        return check("inconclusive", "baseline mean is 0: no relative change")
    change = f"{delta:+.2f}%"
    if not rule.breached(delta):
        return check("pass", f"{change} is within {rule.label}")
    if comparison.verdict == INSUFFICIENT:
        n = min(comparison.baseline.n, comparison.candidate.n)
        return check(
            "inconclusive",
            f"{change} is beyond {rule.label}, but with n={n} on a side no significance "
            "claim can be made: run more repetitions",
        )
    p = comparison.p_value
    if comparison.significant:
        return check("fail", f"{change} is beyond {rule.label} and significant (p={p:.3g})")
    return check("pass", f"{change} is beyond {rule.label} but not significant (p={p:.3g})")


@dataclass(frozen=True)
class Unmatched:
    run: str
    case_id: str
    job: str


@dataclass(frozen=True)
class CompareResult:
    baseline: str
    candidates: tuple[str, ...]
    cells: tuple[CellComparison, ...]
    checks: tuple[RuleCheck, ...]
    unmatched: tuple[Unmatched, ...] = ()
    idle_rules: tuple[Rule, ...] = ()
    """Rules whose metric no matched cell has."""
    matched_by_job: tuple[str, ...] = ()
    """Candidates matched by job name alone (one case on each side, different ids)."""
    matched_by_params: tuple[str, ...] = ()
    """Candidates with cells matched on their fio parameters (rw, bs, iodepth, numjobs)."""
    options: StatOptions = field(default_factory=StatOptions)

    @property
    def failed(self) -> tuple[RuleCheck, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def inconclusive(self) -> tuple[RuleCheck, ...]:
        return tuple(c for c in self.checks if c.status == "inconclusive")

    def gate_passed(self, *, fail_inconclusive: bool = False) -> bool:
        return not self.failed and not (fail_inconclusive and self.inconclusive)


Cells = dict[tuple[str, str], dict[str, list[float]]]
CellKey = tuple[str, str]

MATCH_PARAMS = ("rw", "bs", "iodepth", "numjobs")
"""The fio options that say which workload a cell measured, whatever its job is called."""
_FIO_DEFAULTS = {"rw": "read", "bs": "4096", "iodepth": "1", "numjobs": "1"}
_RW_ALIASES = {"readwrite": "rw", "randreadwrite": "randrw"}


def _normal(param: str, value: str) -> str:
    """One spelling per value: ``4k`` = ``4096``, ``01`` = ``1``, ``readwrite`` = ``rw``."""
    text = value.strip().lower()
    if param == "rw":
        return _RW_ALIASES.get(text, text)
    if param == "bs":
        try:
            return str(parse_size(text))
        except ValueError:
            return text
    try:
        return _number(float(text))
    except ValueError:
        return text


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def workload_key(params: Mapping[str, str]) -> tuple[str, ...] | None:
    """(rw, bs, iodepth, numjobs) of a job's options, or ``None`` if it does not say ``rw``."""
    if not params.get("rw"):
        return None
    return tuple(_normal(p, params.get(p) or _FIO_DEFAULTS[p]) for p in MATCH_PARAMS)


def _by_params(
    run: RunRecord, keys: Iterable[CellKey], one_case: bool
) -> dict[tuple[Any, ...], CellKey]:
    """Workload key -> cell, for keys that exactly one cell of ``run`` has."""
    found: dict[tuple[Any, ...], list[CellKey]] = {}
    for case, job in keys:
        work = workload_key(run.job_params.get(job, {}))
        if work is not None:
            found.setdefault(("", *work) if one_case else (case, *work), []).append((case, job))
    return {k: v[0] for k, v in found.items() if len(v) == 1}


def match_cells(
    baseline: RunRecord, candidate: RunRecord
) -> tuple[list[tuple[CellKey, CellKey]], str | None]:
    """Pairs of (baseline cell key, candidate cell key), and how the pairs beyond the same
    (case, job) were found: ``"job"`` (job name, one case a side), ``"params"`` (fio
    parameters), or ``None``."""
    base, cand = baseline.cells(), candidate.cells()
    pairs = [(key, key) for key in cand if key in base]
    one_case = len(baseline.cases) == 1 and len(candidate.cases) == 1
    how: str | None = None
    if not pairs and one_case:
        base_by_job = {job: (case, job) for case, job in base}
        pairs = [(base_by_job[job], (case, job)) for case, job in cand if job in base_by_job]
        how = "job" if pairs else None
    paired_base, paired_cand = {b for b, _ in pairs}, {c for _, c in pairs}
    left_base = [k for k in base if k not in paired_base]
    left_cand = [k for k in cand if k not in paired_cand]
    base_work = _by_params(baseline, left_base, one_case)
    cand_work = _by_params(candidate, left_cand, one_case)
    by_params = [(base_work[w], cell) for w, cell in cand_work.items() if w in base_work]
    if by_params:
        pairs += by_params
        how = "params" if how is None else how
    return pairs, how


def _metrics_for(
    wanted: Sequence[str] | None, rules: Iterable[Rule], base: Mapping[str, Any], cand: Any
) -> list[str]:
    names = list(dict.fromkeys([*(wanted or DEFAULT_METRICS), *(r.metric for r in rules)]))
    return [m for m in names if base.get(m) and cand.get(m)]


def compare_runs(
    baseline: RunRecord,
    candidates: Sequence[RunRecord],
    *,
    metrics: Sequence[str] | None = None,
    rules: Sequence[Rule] = (),
    options: StatOptions | None = None,
) -> CompareResult:
    """Every candidate against the baseline: one comparison per matched cell and metric
    (``metrics``, default DEFAULT_METRICS, plus the rules' metrics), and every rule on every
    matched cell that has its metric."""
    opts = options or StatOptions()
    for name in metrics or ():
        check_metric(name)
    base_cells = baseline.cells()
    cells: list[CellComparison] = []
    checks: list[RuleCheck] = []
    unmatched: list[Unmatched] = []
    by_job: list[str] = []
    by_params: list[str] = []
    used_rules: set[str] = set()
    for candidate in candidates:
        cand_cells = candidate.cells()
        pairs, how = match_cells(baseline, candidate)
        if how == "job":
            by_job.append(candidate.id)
        elif how == "params":
            by_params.append(candidate.id)
        matched_base = {b for b, _ in pairs}
        matched_cand = {c for _, c in pairs}
        unmatched += [Unmatched(baseline.id, *k) for k in base_cells if k not in matched_base]
        unmatched += [Unmatched(candidate.id, *k) for k in cand_cells if k not in matched_cand]
        for base_key, cand_key in pairs:
            base_values, cand_values = base_cells[base_key], cand_cells[cand_key]
            case_id, job = cand_key
            found: dict[str, Comparison] = {}
            for metric in _metrics_for(metrics, rules, base_values, cand_values):
                comparison = compare_cells(
                    describe(
                        base_values[metric],
                        opts,
                        what=f"{metric} of {base_key[0]}/{base_key[1]}",
                        path=baseline.path,
                    ),
                    describe(
                        cand_values[metric],
                        opts,
                        what=f"{metric} of {case_id}/{job}",
                        path=candidate.path,
                    ),
                    metric=metric,
                    options=opts,
                )
                found[metric] = comparison
                cells.append(
                    CellComparison(candidate.id, case_id, job, comparison, base_key[0], base_key[1])
                )
            for rule in rules:
                if rule.metric in found:
                    used_rules.add(rule.text)
                    checks.append(
                        evaluate_rule(
                            rule,
                            found[rule.metric],
                            candidate=candidate.id,
                            case_id=case_id,
                            job=job,
                        )
                    )
    return CompareResult(
        baseline=baseline.id,
        candidates=tuple(c.id for c in candidates),
        cells=tuple(cells),
        checks=tuple(checks),
        unmatched=tuple(dict.fromkeys(unmatched)),
        idle_rules=tuple(r for r in rules if r.text not in used_rules),
        matched_by_job=tuple(by_job),
        matched_by_params=tuple(by_params),
        options=opts,
    )
