"""The report's data model: runs -> cases -> jobs -> metrics with statistics, as frozen pydantic
models (the JSON report is their dump), and ``build_report`` that reads run directories into it.

A ``host-baseline`` case (fio on the host against the same backing store) is the *limit*: every
other case's mean is also given as a fraction of the limit's mean for the same job and metric.
Latency percentile curves come from the fio percentiles in each repetition's summary.json (the
completion latency, else the total latency, per direction), averaged over the measured
repetitions. The warm-up repetition (r0) never enters any number.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from vmlab import __version__
from vmlab.errors import ResultError
from vmlab.fio.combine import combine_jobs
from vmlab.fio.model import FioOutput
from vmlab.metrics import BASELINE_ID, DIRECTIONS, METRICS, limit_cases
from vmlab.report.compare import CompareResult
from vmlab.report.stats import CellStats, StatOptions, describe
from vmlab.results.rundir import CaseDir, RunRecord, Sample, read_raw, read_summary

log = logging.getLogger(__name__)

MAX_COMMAND_CHARS = 200_000

_CONFIG = ConfigDict(frozen=True, extra="forbid")


class Stat(BaseModel):
    model_config = _CONFIG

    n: int
    mean: float
    stdev: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None
    noisy: bool
    single: bool
    values: list[float]

    @classmethod
    def of(cls, cell: CellStats) -> Stat:
        return cls(
            n=cell.n,
            mean=cell.mean,
            stdev=cell.stdev,
            cv=cell.cv,
            ci_low=cell.ci_low,
            ci_high=cell.ci_high,
            noisy=cell.noisy,
            single=cell.single,
            values=list(cell.values),
        )

    @property
    def flags(self) -> list[str]:
        return [f for f, on in (("single sample", self.single), ("noisy", self.noisy)) if on]


class MetricView(BaseModel):
    model_config = _CONFIG

    metric: str
    unit: str
    label: str
    higher_is_better: bool
    stat: Stat
    of_limit: float | None = None
    """mean / the host baseline's mean for the same job and metric."""


class Curve(BaseModel):
    model_config = _CONFIG

    direction: str
    latency: Literal["clat", "lat"]
    points: list[tuple[float, float]]
    """(percentile, ns), ascending, averaged over the measured repetitions."""


class StopView(BaseModel):
    """Why a job's repetitions stopped (``jobs/<job>/repeat.json``)."""

    model_config = _CONFIG

    repetitions: int
    reason: str
    """fixed, ci, differs, within-margin or max (vmlab.bench.repeat)."""
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class JobView(BaseModel):
    model_config = _CONFIG

    name: str
    params: dict[str, str]
    repetitions: int
    warmup: bool
    metrics: dict[str, MetricView]
    curves: list[Curve]
    stop: StopView | None = None
    """How many repetitions the job took and why it stopped (None: a run from before vmlab
    stored it, or an import)."""

    def get(self, metric: str) -> MetricView | None:
        return self.metrics.get(metric)

    @property
    def directions(self) -> list[str]:
        return [d for d in DIRECTIONS if f"{d}_iops" in self.metrics]


class CaseView(BaseModel):
    model_config = _CONFIG

    id: str
    status: str
    error: str | None
    params: dict[str, str]
    is_limit: bool
    command_kind: Literal["argv", "xml", "fio"] | None
    """"fio": an imported case, its jobs' own fio options (no QEMU ran it under vmlab)."""
    command: str | None
    jobs: list[JobView]

    def job(self, name: str) -> JobView | None:
        return next((j for j in self.jobs if j.name == name), None)


class RunView(BaseModel):
    model_config = _CONFIG

    id: str
    name: str
    description: str
    path: str
    status: str
    source: str
    started: str | None
    finished: str | None
    host: str | None
    limit_case: str | None
    jobs: list[str]
    cases: list[CaseView]
    hypervisors: list[str] = []  # one line per nested L1 host that served cases


class ComparisonRow(BaseModel):
    model_config = _CONFIG

    candidate: str
    case_id: str
    job: str
    metric: str
    unit: str
    higher_is_better: bool
    baseline: Stat
    value: Stat
    delta_pct: float | None
    p_value: float | None
    significant: bool
    better: bool | None
    verdict: str
    ratio_ci: tuple[float, float] | None
    hedges_g: float | None


class RuleRow(BaseModel):
    model_config = _CONFIG

    rule: str
    candidate: str
    case_id: str
    job: str
    status: str
    message: str


class Report(BaseModel):
    model_config = _CONFIG

    title: str
    generated: str
    vmlab_version: str
    confidence: float
    noisy_cv: float
    alpha: float
    runs: list[RunView]
    baseline: str | None = None
    comparisons: list[ComparisonRow] = []
    rules: list[RuleRow] = []
    unmatched: list[str] = []
    """Cells of a compared run that found no partner: "run: case/job"."""
    matched_on_params: list[str] = []
    """Runs whose cells were paired on fio parameters (other job names)."""


# --------------------------------------------------------------------------------------------


def _read_fio(sample: Sample, what: str) -> FioOutput | None:
    """The fio report in one repetition's summary.json (an import's: read again from its raw
    file), or None (logged: no ``what``)."""
    try:
        data = read_summary(sample.path)
        if "fio" not in data and isinstance(data.get("source"), dict):
            from vmlab.results.importer import measured_fio  # the importer: only for imports

            return measured_fio(read_raw(sample.path), data["source"])
        return FioOutput.model_validate(data["fio"])
    except (ResultError, KeyError, TypeError, ValidationError) as exc:
        log.warning("%s: no %s (%s)", sample.path, what, exc)
        return None


def _percentiles(sample: Sample) -> dict[str, tuple[str, dict[float, float]]]:
    """direction -> (latency kind, percentile -> ns) of one repetition, from summary.json."""
    report = _read_fio(sample, "fio percentiles")
    if report is None or not report.jobs:
        return {}
    job = combine_jobs(report.jobs) if len(report.jobs) > 1 else report.jobs[0]
    out: dict[str, tuple[str, dict[float, float]]] = {}
    for name, direction in job.directions().items():
        if direction.clat is not None and direction.clat.percentiles_ns:
            kind, table = "clat", direction.clat.percentiles_ns
        elif direction.lat is not None and direction.lat.percentiles_ns:
            kind, table = "lat", direction.lat.percentiles_ns
        else:
            continue
        out[name] = (kind, {float(k): v for k, v in table.items()})
    return out


def _curves(samples: Sequence[Sample]) -> list[Curve]:
    per_rep = [_percentiles(s) for s in samples]
    curves = []
    for direction in DIRECTIONS:
        tables = [rep[direction] for rep in per_rep if direction in rep]
        if not tables:
            continue
        kinds = {kind for kind, _ in tables}
        kind: Literal["clat", "lat"] = "clat" if kinds == {"clat"} else "lat"
        tables = [t for t in tables if t[0] == kind]
        common = set(tables[0][1]).intersection(*(t.keys() for _, t in tables[1:]))
        points = sorted(
            (p, math.fsum(t[p] for _, t in tables) / len(tables)) for p in common if p < 100
        )
        if points:
            curves.append(Curve(direction=direction, latency=kind, points=points))
    return curves


def _fio_options(jobs: Sequence[tuple[str, Sequence[Sample]]]) -> str | None:
    """The fio options each job of an imported case ran with, as a fio job file: the report's
    global options overlaid with the job's own, from the first measured repetition
    (``jobs``: job name -> its measured repetitions, in order)."""
    sections = []
    for job, reps in jobs:
        report = _read_fio(reps[0], "fio options") if reps else None
        if report is None or not report.jobs:
            continue
        options = report.jobs[0].options  # the global options overlaid with the job's
        lines = [f"[{job}]", *(f"{k}={v}" if v else k for k, v in options.items())]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)[:MAX_COMMAND_CHARS] or None


def _metric_order(names: Sequence[str]) -> list[str]:
    order = {m: i for i, m in enumerate(METRICS)}
    return sorted(names, key=lambda m: (order.get(m, len(order)), m))


def hypervisor_lines(run: RunRecord) -> list[str]:
    """What served a nested run's cases, one line per L1 (host.json's ``nested``): its label,
    kernel and kernel package, the accelerators of both levels and the lab facilities its
    kernel has. Empty for a run on the host, or an imported one."""
    lines = []
    for l1 in run.nested:
        modules = l1.get("kernel_modules")
        modules = modules if isinstance(modules, dict) else {}
        has = ", ".join(sorted(m for m, present in modules.items() if present)) or "none"
        lines.append(
            f"L1 {l1.get('label', '?')}: kernel {l1.get('kernel', '?')} "
            f"({l1.get('kernel_package', '?')}), run under {l1.get('accel', '?')}, its guests "
            f"under {l1.get('l2_accel', '?')}; /dev/vhost-net "
            f"{'yes' if l1.get('vhost_net') else 'no'}; modules: {has}"
        )
    return lines


def build_run(run: RunRecord, options: StatOptions, *, details: bool = True) -> RunView:
    """One run's view; ``details=False`` skips reading the repetitions' summary.json (faster):
    no latency curves, and no fio options as an imported case's command."""
    cells = run.cells()
    limits = limit_cases([c.case_id for c in run.cases])
    limit = BASELINE_ID if BASELINE_ID in limits else None  # a one-host run's limit
    stats: dict[tuple[str, str], dict[str, CellStats]] = {
        key: {
            m: describe(v, options, what=f"{m} of {key[0]}/{key[1]}", path=run.path)
            for m, v in values.items()
            if v
        }
        for key, values in cells.items()
    }
    samples: dict[tuple[str, str], list[Sample]] = {}
    warm: set[tuple[str, str]] = set()
    for sample in run.samples:
        if sample.repetition >= 1:
            samples.setdefault((sample.case_id, sample.job), []).append(sample)
        else:
            warm.add((sample.case_id, sample.job))
    cases = []
    for case in run.cases:
        jobs = []
        case_reps: list[tuple[str, list[Sample]]] = []
        for job in run.jobs():
            reps = sorted(samples.get((case.case_id, job), []), key=lambda s: s.repetition)
            case_reps.append((job, reps))
            cell = stats.get((case.case_id, job))
            if not cell:
                continue
            own = limits.get(case.case_id)
            ref = stats.get((own, job), {}) if own and case.case_id != own else {}
            metrics = {}
            for metric in _metric_order(list(cell)):
                info = METRICS.get(metric)
                base = ref.get(metric)
                metrics[metric] = MetricView(
                    metric=metric,
                    unit=info.unit if info else "",
                    label=info.label if info else metric,
                    higher_is_better=info.higher_is_better if info else True,
                    stat=Stat.of(cell[metric]),
                    of_limit=cell[metric].mean / base.mean if base and base.mean else None,
                )
            stop = run.stops.get((case.case_id, job))
            jobs.append(
                JobView(
                    name=job,
                    params=dict(run.job_params.get(job, {})),
                    repetitions=len(reps),
                    warmup=(case.case_id, job) in warm,
                    metrics=metrics,
                    curves=_curves(reps) if details else [],
                    stop=StopView(
                        repetitions=stop.repetitions, reason=stop.reason, detail=stop.detail
                    )
                    if stop
                    else None,
                )
            )
        kind: Literal["argv", "xml", "fio"] | None
        kind, command = CaseDir(case.path, case.case_id).command(MAX_COMMAND_CHARS)
        if command is None and run.source == "import" and details:
            command = _fio_options(case_reps)
            kind = "fio" if command else None
        cases.append(
            CaseView(
                id=case.case_id,
                status=case.status,
                error=case.error,
                params=dict(case.params),
                is_limit=limits.get(case.case_id) == case.case_id,
                command_kind=kind,
                command=command,
                jobs=jobs,
            )
        )
    return RunView(
        id=run.id,
        name=run.name,
        description=run.description,
        path=str(run.path),
        status=run.status,
        source=run.source,
        started=run.started,
        finished=run.finished,
        host=run.host,
        limit_case=limit,
        jobs=[j for j in run.jobs() if any(c.job(j) for c in cases)],
        cases=cases,
        hypervisors=hypervisor_lines(run),
    )


def _comparison_rows(result: CompareResult) -> list[ComparisonRow]:
    rows = []
    for cell in result.cells:
        c = cell.comparison
        info = METRICS.get(c.metric)
        rows.append(
            ComparisonRow(
                candidate=cell.candidate,
                case_id=cell.case_id,
                job=cell.pair_label,
                metric=c.metric,
                unit=info.unit if info else "",
                higher_is_better=c.higher_is_better,
                baseline=Stat.of(c.baseline),
                value=Stat.of(c.candidate),
                delta_pct=c.delta_pct,
                p_value=c.p_value,
                significant=c.significant,
                better=c.better,
                verdict=c.verdict,
                ratio_ci=c.ratio_ci,
                hedges_g=c.hedges_g,
            )
        )
    return rows


def build_report(
    runs: Sequence[RunRecord],
    *,
    options: StatOptions | None = None,
    comparison: CompareResult | None = None,
    title: str | None = None,
    generated: str | None = None,
) -> Report:
    """The report of ``runs`` (and of their comparison, if given)."""
    opts = options or StatOptions()
    views = [build_run(run, opts) for run in runs]
    return Report(
        title=title or ", ".join(r.name for r in views),
        generated=generated or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        vmlab_version=__version__,
        confidence=opts.confidence,
        noisy_cv=opts.noisy_cv,
        alpha=opts.alpha,
        runs=views,
        baseline=comparison.baseline if comparison else None,
        comparisons=_comparison_rows(comparison) if comparison else [],
        rules=[
            RuleRow(
                rule=check.rule.text,
                candidate=check.candidate,
                case_id=check.case_id,
                job=check.job,
                status=check.status,
                message=check.message,
            )
            for check in (comparison.checks if comparison else ())
        ],
        unmatched=[f"{u.run}: {u.case_id}/{u.job}" for u in comparison.unmatched]
        if comparison
        else [],
        matched_on_params=list(comparison.matched_by_params) if comparison else [],
    )
