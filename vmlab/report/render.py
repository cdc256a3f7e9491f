"""Report writers: Markdown, CSV, JSON, JUnit XML and one self-contained HTML file.

The HTML works offline: CSS, SVG charts and a few lines of JavaScript are inline, nothing is
fetched. Every string that came from a user or a file (run names, case ids, parameters, command
lines, error messages) is escaped for the format it lands in: HTML by Jinja's autoescape, Markdown
by ``md_escape`` (and fenced blocks longer than any backtick run), XML by ElementTree, CSV by the
csv module (plus a quote in front of cells a spreadsheet would take for a formula).
"""

from __future__ import annotations

import csv
import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from vmlab.metrics import DIRECTIONS, METRICS
from vmlab.render import environment
from vmlab.report import FORMATS
from vmlab.report.charts import (
    BarChart,
    BarInput,
    CurveInput,
    LineChart,
    bar_chart,
    human,
    human_pm,
    pct,
    percentile_chart,
)
from vmlab.report.compare import CompareResult
from vmlab.report.model import CaseView, JobView, MetricView, Report, RunView
from vmlab.report.sweep import MAX_SERIES, sweeps

FILE_NAMES = {
    "md": "report.md",
    "csv": "report.csv",
    "json": "report.json",
    "junit": "report.junit.xml",
    "html": "report.html",
}
OPEN_LATENCY_CHARTS = 6
"""Latency charts shown unfolded; the others sit in a closed <details>."""


# --------------------------------------------------------------------------------------------
# Escaping and formatting


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def md_escape(value: object) -> str:
    """A string that Markdown shows literally, on one line (HTML in it stays text)."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def md_fence(text: str) -> str:
    """A fenced block that ``text`` cannot close: longer than its longest backtick run."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def xml_text(value: object) -> str:
    return _XML_INVALID.sub("\ufffd", str(value))


def csv_cell(value: object) -> object:
    """Numbers as they are; text that a spreadsheet would run as a formula gets a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def stat_text(metric: MetricView | None) -> str:
    if metric is None:
        return "-"
    return human_pm(metric.stat.mean, _half(metric), metric.unit)


def _half(metric: MetricView) -> float | None:
    s = metric.stat
    return None if s.ci_low is None or s.ci_high is None else (s.ci_high - s.ci_low) / 2


# --------------------------------------------------------------------------------------------
# Rows shared by the Markdown and HTML tables


@dataclass(frozen=True)
class ResultRow:
    """One direction of one job of one configuration: read and write never share a cell."""

    case: str
    job: str
    direction: str
    is_limit: bool
    n: str
    iops: str
    iops_value: float
    bandwidth: str
    clat_mean: str
    clat_p99: str
    lat_mean: str
    of_limit: str
    flags: str
    stopped: str = ""
    """Why the repetitions stopped, e.g. "ci: mean ±1.80% ≤ ±2%" ("" when not recorded)."""


def _flags(job: JobView, direction: str) -> str:
    """'single sample', and 'noisy' with the worst CV among this direction's throughput and
    latency metrics."""
    keys = [f"{direction}_{m}" for m in ("iops", "bw_kib_s", "lat_mean_ns", "clat_mean_ns")]
    noisy = [job.metrics[m].stat for m in keys if m in job.metrics and job.metrics[m].stat.noisy]
    flags = []
    if job.repetitions < 2:
        flags.append("single sample")
    if noisy:
        cvs = [s.cv for s in noisy if s.cv is not None]
        flags.append(f"noisy (CV up to {max(cvs) * 100:.0f}%)" if cvs else "noisy")
    return "; ".join(flags)


def _p99_text(job: JobView, direction: str) -> str:
    """The p99 as stored: completion latency, marked "(total)" where fio had only total
    latency percentiles."""
    text = stat_text(job.get(f"{direction}_lat_p99_ns"))
    kinds = {c.direction: c.latency for c in job.curves}
    return f"{text} (total)" if kinds.get(direction) == "lat" and text != "-" else text


def result_rows(run: RunView) -> list[ResultRow]:
    rows = []
    for case in run.cases:
        for job in case.jobs:
            total = job.get("total_iops")
            of_limit = total.of_limit if total else None
            for d in job.directions:
                iops = job.get(f"{d}_iops")
                rows.append(
                    ResultRow(
                        case=case.id,
                        job=job.name,
                        direction=d,
                        is_limit=case.is_limit,
                        n=f"{job.repetitions}" + (" (+warm-up)" if job.warmup else ""),
                        iops=stat_text(iops),
                        iops_value=iops.stat.mean if iops else 0.0,
                        bandwidth=stat_text(job.get(f"{d}_bw_kib_s")),
                        clat_mean=stat_text(job.get(f"{d}_clat_mean_ns")),
                        clat_p99=_p99_text(job, d),
                        lat_mean=stat_text(job.get(f"{d}_lat_mean_ns")),
                        of_limit="limit"
                        if case.is_limit
                        else ("-" if of_limit is None else f"{of_limit:.2f}×"),
                        flags=_flags(job, d),
                        stopped="" if job.stop is None else str(job.stop),
                    )
                )
    return rows


# --------------------------------------------------------------------------------------------
# Charts of one run


@dataclass(frozen=True)
class RunCharts:
    run: RunView
    rows: tuple[ResultRow, ...]
    bars: tuple[BarChart, ...]
    latency: tuple[LineChart, ...]


def _bar_inputs(
    run: RunView, job_names: Sequence[str], suffix: str, direction: str
) -> list[BarInput]:
    several_cases = sum(1 for c in run.cases if c.jobs) > 1
    items = []
    for case in run.cases:
        for job in case.jobs:
            if job.name not in job_names:
                continue
            metric = job.get(f"{direction}_{suffix}")
            if metric is None:
                continue
            notes = []
            if metric.of_limit is not None:
                notes.append(f"{metric.of_limit:.2f}× limit")
            notes += metric.stat.flags
            items.append(
                BarInput(
                    group=case.id if several_cases else job.name,
                    series=direction,
                    value=metric.stat.mean,
                    ci_low=metric.stat.ci_low,
                    ci_high=metric.stat.ci_high,
                    note=", ".join(notes),
                    limit=case.is_limit,
                )
            )
    return items


def run_charts(run: RunView) -> RunCharts:
    several_cases = sum(1 for c in run.cases if c.jobs) > 1
    groups: list[tuple[str, list[str]]] = (
        [(f"job {j}", [j]) for j in run.jobs] if several_cases else [("all jobs", run.jobs)]
    )
    bars: list[BarChart] = []
    for label, jobs in groups:
        for suffix, unit, what in (("iops", "IOPS", "IOPS"), ("bw_kib_s", "KiB/s", "bandwidth")):
            for d in DIRECTIONS:  # read and write apart: one chart each
                chart = bar_chart(
                    f"{d} {what}, {label}",
                    unit,
                    _bar_inputs(run, jobs, suffix, d),
                    axis_label=f"{d} {what}",
                )
                if chart is not None:
                    bars.append(chart)
    latency: list[LineChart] = []
    for job_name in run.jobs:
        curves = [
            CurveInput(
                label=f"{case.id} {curve.direction}" if several_cases else curve.direction,
                direction=curve.direction,
                color_key=case.id if several_cases else curve.direction,
                points=curve.points,
                limit=case.is_limit,
            )
            for case in run.cases
            if (job := case.job(job_name)) is not None
            for curve in job.curves
        ]
        lines = percentile_chart(f"latency percentiles, job {job_name}", curves)
        if lines is not None:
            latency.append(lines)
    return RunCharts(run, tuple(result_rows(run)), tuple(bars), tuple(latency))


# --------------------------------------------------------------------------------------------
# Templates


_FILTERS = (
    ("md", md_escape),
    ("fence", md_fence),
    ("human", human),
    ("pct", pct),
    ("stat", stat_text),
    ("f1", lambda v: f"{v:.1f}"),
)


def _template(name: str) -> jinja2.Template:
    """templates/report/NAME: HTML autoescaped, Markdown not; block tags leave no blank lines."""
    env = environment(autoescape=name.endswith(".html.j2"), trim=True, filters=_FILTERS)
    return env.get_template(f"report/{name}")


def _context(report: Report) -> dict[str, object]:
    return {
        "report": report,
        "charts": [run_charts(run) for run in report.runs],
        "sweeps": sweeps(report),
        "max_series": MAX_SERIES,
        "metrics": METRICS,
        "open_latency": OPEN_LATENCY_CHARTS,
    }


def render_markdown(report: Report) -> str:
    return _template("report.md.j2").render(**_context(report))


def render_html(report: Report) -> str:
    return _template("report.html.j2").render(**_context(report))


def render_json(report: Report) -> str:
    return report.model_dump_json(indent=2) + "\n"


CSV_COLUMNS = (
    "run",
    "case",
    "job",
    "metric",
    "unit",
    "n",
    "mean",
    "stdev",
    "cv_pct",
    "ci_low",
    "ci_high",
    "confidence",
    "flags",
    "fraction_of_limit",
    "case_params",
    "job_params",
)


def _kv(params: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in params.items())


def render_csv(report: Report) -> str:
    """One row per run x case x job x metric (long format)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in report.runs:
        for case in run.cases:
            for job in case.jobs:
                for metric in job.metrics.values():
                    s = metric.stat
                    row: list[object] = [
                        run.id,
                        case.id,
                        job.name,
                        metric.metric,
                        metric.unit,
                        s.n,
                        s.mean,
                        s.stdev,
                        None if s.cv is None else s.cv * 100,
                        s.ci_low,
                        s.ci_high,
                        report.confidence,
                        ";".join(s.flags),
                        metric.of_limit,
                        _kv(case.params),
                        _kv(job.params),
                    ]
                    writer.writerow(["" if v is None else csv_cell(v) for v in row])
    return buf.getvalue()


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(parent: ET.Element, name: str, cases: Iterable[ET.Element]) -> None:
    members = list(cases)
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=xml_text(name),
        tests=str(len(members)),
        failures=str(sum(1 for c in members if c.find("failure") is not None)),
        errors="0",
        skipped=str(sum(1 for c in members if c.find("skipped") is not None)),
    )
    suite.extend(members)


def _testcase(classname: str, name: str) -> ET.Element:
    return ET.Element("testcase", classname=xml_text(classname), name=xml_text(name))


def _job_case(run: RunView, case: CaseView, job: JobView) -> ET.Element:
    element = _testcase(f"{run.id}.{case.id}", job.name)
    lines = [f"{m.metric} = {stat_text(m)} (n={m.stat.n})" for m in job.metrics.values()]
    ET.SubElement(element, "system-out").text = xml_text("\n".join(lines))
    if case.status in ("failed", "interrupted"):
        ET.SubElement(
            element, "failure", message=xml_text(f"case {case.status}: {case.error or ''}")
        )
    return element


def render_junit(report: Report) -> str:
    """One testcase per case x job (a case that failed before any job: one testcase)."""
    root = ET.Element("testsuites", name=xml_text(f"vmlab report {report.title}"))
    for run in report.runs:
        cases = []
        for case in run.cases:
            if case.jobs:
                cases += [_job_case(run, case, job) for job in case.jobs]
                continue
            element = _testcase(f"{run.id}.{case.id}", "(no results)")
            ET.SubElement(
                element,
                "failure",
                message=xml_text(f"case {case.status}: {case.error or 'no measured repetition'}"),
            )
            cases.append(element)
        _suite(root, run.id, cases)
    if report.rules:
        rule_cases = []
        for rule in report.rules:
            element = _testcase(f"{rule.candidate}.{rule.case_id}.{rule.job}", rule.rule)
            if rule.status == "fail":
                ET.SubElement(element, "failure", message=xml_text(rule.message))
            elif rule.status == "inconclusive":
                ET.SubElement(element, "skipped", message=xml_text(rule.message))
            rule_cases.append(element)
        _suite(root, "rules", rule_cases)
    return _xml(root)


def compare_junit(result: CompareResult, *, fail_inconclusive: bool = False) -> str:
    """One testcase per rule x matched cell (x candidate run)."""
    root = ET.Element("testsuites", name="vmlab compare")
    cases = []
    for check in result.checks:
        element = _testcase(f"{check.candidate}.{check.case_id}.{check.job}", check.rule.text)
        c = check.comparison
        ET.SubElement(element, "system-out").text = xml_text(
            f"baseline {result.baseline}: {c.baseline.mean:.6g} (n={c.baseline.n}); "
            f"candidate {check.candidate}: {c.candidate.mean:.6g} (n={c.candidate.n}); "
            f"delta {pct(c.delta_pct, 2)}; p={c.p_value if c.p_value is not None else '-'}; "
            f"verdict {c.verdict}"
        )
        if check.status == "fail" or (check.status == "inconclusive" and fail_inconclusive):
            ET.SubElement(element, "failure", message=xml_text(check.message))
        elif check.status == "inconclusive":
            ET.SubElement(element, "skipped", message=xml_text(check.message))
        cases.append(element)
    for rule in result.idle_rules:
        element = _testcase(result.baseline, rule.text)
        ET.SubElement(element, "skipped", message=f"no matched cell has {rule.metric}")
        cases.append(element)
    _suite(root, f"vmlab compare vs {result.baseline}", cases)
    return _xml(root)


RENDERERS = {
    "md": render_markdown,
    "csv": render_csv,
    "json": render_json,
    "junit": render_junit,
    "html": render_html,
}


def write_report(report: Report, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the report in each format to ``out_dir`` (created); returns the files written."""
    unknown = [f for f in formats if f not in RENDERERS]
    if unknown:
        raise ValueError(f"unknown report formats: {', '.join(unknown)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = out_dir / FILE_NAMES[fmt]
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(RENDERERS[fmt](report), encoding="utf-8")
        tmp.replace(target)
        written.append(target)
    return written
