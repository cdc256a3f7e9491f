"""`vmlab import`, `vmlab compare` and `vmlab report`.

The commands live on ``app`` under those names; vmlab.cli attaches them to the top-level app.
A RUN argument is a run id (a directory name under --results) or a run directory path. Errors are
raised as VmlabError (vmlab.cli prints them and exits 1, or 2 for SpecError); ``compare`` itself
exits 3 when an acceptance rule is violated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmlab.errors import ResultError, UsageError
from vmlab.metrics import METRICS
from vmlab.report import FORMATS
from vmlab.report.charts import human_pm, pct
from vmlab.report.compare import CompareResult, Rule, compare_runs, load_rules, parse_rule
from vmlab.report.stats import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    DEFAULT_NOISY_CV,
    CellStats,
    StatOptions,
)
from vmlab.results.rundir import RunRecord, resolve_run, scan_run

app = typer.Typer(no_args_is_help=True)

GATE_FAILED = 3
"""Exit code of `vmlab compare` when an acceptance rule is violated."""

ResultsOpt = Annotated[
    Path, typer.Option("--results", help="results root: run directories and index.sqlite")
]
RunsArg = Annotated[
    list[str], typer.Argument(help="run ids (under --results) or run directory paths")
]
ConfidenceOpt = Annotated[
    float,
    typer.Option("--confidence", min=0.5, max=0.999, help="confidence level of the intervals"),
]
NoiseOpt = Annotated[
    float,
    typer.Option(
        "--noisy-cv", min=0.0, help="flag a cell as noisy above this coefficient of variation, %"
    ),
]


def _console() -> Console:
    return Console(highlight=False)


def _load(refs: Sequence[str], results: Path) -> list[RunRecord]:
    return [scan_run(resolve_run(results, ref)) for ref in refs]


def _options(confidence: float, noisy_cv_pct: float, alpha: float = DEFAULT_ALPHA) -> StatOptions:
    return StatOptions(confidence=confidence, noisy_cv=noisy_cv_pct / 100, alpha=alpha)


# --------------------------------------------------------------------------------------------


@app.command("import")
def import_(
    source: Annotated[
        Path, typer.Argument(metavar="DIR", help="folder (tree) of fio JSON output files")
    ],
    name: Annotated[
        str | None, typer.Option(help="run name (default: the folder's path under DIR)")
    ] = None,
    results: ResultsOpt = Path("results"),
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="processes parsing folders side by side (default: one per CPU)"),
    ] = None,
) -> None:
    """Import fio JSON that vmlab did not produce: one run per folder, the folder as its case.

    Parameters come from each file's own job options (rw, bs, iodepth, numjobs, ioengine,
    direct, size; the server for client/server output); the ones that vary name the jobs
    (e.g. randread-qd16-nj4); files with the same parameters are repetitions. Raw files are
    copied unchanged. Files that cannot be used are listed with the reason.
    """
    if not source.exists():
        raise UsageError(
            f"{source}: no such file or directory",
            hint="pass a folder (tree) of fio JSON output files, or one such file",
        )
    from vmlab.results.importer import import_tree  # the fio models: not for compare

    console = _console()
    result = import_tree(source, results, name=name, workers=workers)
    if result.runs:
        table = Table(title="imported", title_justify="left")
        # The run id is what people copy: never cut or wrapped; the folder is cut short instead.
        table.add_column("run", no_wrap=True, min_width=max(len(r.run_id) for r in result.runs))
        table.add_column("folder", no_wrap=True, overflow="ellipsis")
        table.add_column("files", justify="right", no_wrap=True)
        table.add_column("jobs", justify="right", no_wrap=True)
        for run in result.runs:
            table.add_row(
                escape(run.run_id), escape(str(run.folder)), str(run.files), str(run.jobs)
            )
        console.print(table)
    for rejected in result.rejected:
        console.print(
            f"[yellow]not imported[/] {escape(str(rejected.path))}: {escape(rejected.reason)}"
        )
    if result.ignored:
        console.print(f"[dim]{result.ignored} other files ignored (not .json/.txt/.out)[/]")
    if not result.runs:
        raise ResultError(
            f"nothing imported from {source}: no usable fio output",
            hint="vmlab imports fio's JSON output (--output-format=json or json+), saved as "
            "*.json, *.txt or *.out files",
        )


# --------------------------------------------------------------------------------------------


def _fmt_cell(cell: CellStats, unit: str) -> str:
    flags = " ".join(f"[yellow]{f}[/]" for f in (("noisy",) if cell.noisy else ()))
    text = human_pm(cell.mean, cell.half_width, unit)
    return f"{escape(text)} [dim]n={cell.n}[/]" + (f" {flags}" if flags else "")


def _delta(better: bool | None, delta: float | None, significant: bool) -> str:
    text = pct(delta) + ("*" if significant else "")
    if better is None:
        return text
    return f"[{'green' if better else 'red'}]{text}[/]"


def print_comparison(console: Console, result: CompareResult) -> None:
    several = len(result.candidates) > 1
    table = Table(title=f"compared with {escape(result.baseline)}", title_justify="left")
    columns = ["run"] if several else []
    columns += ["configuration", "job", "metric", "baseline", "candidate", "Δ", "p", "verdict"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("Δ", "p") else "left")
    for cell in result.cells:
        c = cell.comparison
        unit = METRICS[c.metric].unit if c.metric in METRICS else ""
        row = [escape(cell.candidate)] if several else []
        row += [
            escape(cell.case_id),
            escape(cell.pair_label),
            c.metric,
            _fmt_cell(c.baseline, unit),
            _fmt_cell(c.candidate, unit),
            _delta(c.better, c.delta_pct, c.significant),
            "-" if c.p_value is None else f"{c.p_value:.3g}",
            c.verdict,
        ]
        table.add_row(*row)
    console.print(table)
    console.print(
        "[dim]Δ: change of the mean (green better, red worse); * significant "
        f"(Welch's t-test, p < {result.options.alpha})[/]"
    )
    for cand in result.matched_by_job:
        console.print(
            f"[yellow]note[/] {escape(cand)}: one configuration on each side with different "
            "ids: matched by job name"
        )
    for cand in result.matched_by_params:
        console.print(
            f"[yellow]note[/] {escape(cand)}: cells with other names matched on their fio "
            "parameters (rw, bs, iodepth, numjobs); the job column says which pair"
        )
    if result.unmatched:
        console.print(f"[yellow]unmatched[/] {len(result.unmatched)} cells have no partner:")
        for run in dict.fromkeys(u.run for u in result.unmatched):
            names = [f"{u.case_id}/{u.job}" for u in result.unmatched if u.run == run]
            shown = ", ".join(names[:12])
            more = f" and {len(names) - 12} more" if len(names) > 12 else ""
            console.print(f"  {escape(run)} only: {escape(shown)}{more}")


def print_checks(console: Console, result: CompareResult, *, fail_inconclusive: bool) -> None:
    if not result.checks and not result.idle_rules:
        return
    table = Table(title="acceptance rules", title_justify="left")
    for column in ("rule", "run", "configuration", "job", "status", "detail"):
        table.add_column(column)
    colors = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for check in result.checks:
        if check.status == "pass" and len(result.checks) > 40:
            continue  # long gates: show what needs attention
        table.add_row(
            escape(check.rule.text),
            escape(check.candidate),
            escape(check.case_id),
            escape(check.job),
            f"[{colors[check.status]}]{check.status}[/]",
            escape(check.message),
        )
    console.print(table)
    for rule in result.idle_rules:
        console.print(f"[yellow]rule {escape(rule.text)} applies to no matched cell[/]")
    failed, unsure = len(result.failed), len(result.inconclusive)
    verdict = result.gate_passed(fail_inconclusive=fail_inconclusive)
    console.print(
        f"gate: {'[green]passed[/]' if verdict else '[red]FAILED[/]'} - {len(result.checks)} "
        f"checks, {failed} failed, {unsure} inconclusive"
    )


@app.command()
def compare(
    runs: RunsArg,
    baseline: Annotated[
        str | None, typer.Option(help="run to compare against (default: the first RUN)")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help="metric to show (repeatable); default: the main ones"),
    ] = None,
    rule: Annotated[
        list[str] | None,
        typer.Option(
            "--rule",
            "-r",
            help='acceptance rule "METRIC:LIMIT%", e.g. "read_iops:-5%" (repeatable)',
        ),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="YAML/JSON file of acceptance rules")
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="write JUnit XML: one testcase per rule x cell")
    ] = None,
    fail_inconclusive: Annotated[
        bool,
        typer.Option(
            "--fail-inconclusive", help="fail the gate when a rule cannot be decided (n=1)"
        ),
    ] = False,
    confidence: ConfidenceOpt = DEFAULT_CONFIDENCE,
    noisy_cv: NoiseOpt = DEFAULT_NOISY_CV * 100,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0001, max=0.5, help="significance level")
    ] = DEFAULT_ALPHA,
    results: ResultsOpt = Path("results"),
) -> None:
    """Compare runs cell by cell (same configuration and job, else same fio parameters) and
    gate on rules.

    Each candidate RUN is compared with the baseline (--baseline, else the first RUN): mean ±
    confidence interval per side, change of the mean, Welch's t-test, verdict. A rule
    "read_iops:-5%" fails when read IOPS drop by more than 5 % AND the drop is significant;
    "read_lat_p99_ns:+10%" bounds a rise; without a sign the limit is in the metric's worse
    direction. With a single repetition on a side a rule is inconclusive, never failed.

    Exit codes: 0 = every rule holds (or no rules); 1 = vmlab error (e.g. unknown run);
    2 = usage error (bad option, invalid rule or rules file); 3 = a rule is violated.
    """
    refs = list(runs)
    if baseline is None:
        if len(refs) < 2:
            raise typer.BadParameter("give two runs or more, or --baseline", param_hint="RUN")
        baseline, refs = refs[0], refs[1:]
    parsed: list[Rule] = [parse_rule(text) for text in rule or ()]
    if rules is not None:
        parsed += load_rules(rules)
    base_record = scan_run(resolve_run(Path(results), baseline))
    candidates = [r for r in _load(refs, results) if r.path != base_record.path] or [base_record]
    result = compare_runs(
        base_record,
        candidates,
        metrics=list(metric) if metric else None,
        rules=parsed,
        options=_options(confidence, noisy_cv, alpha),
    )
    console = _console()
    if not result.cells:
        raise ResultError(
            f"no cell of {', '.join(result.candidates)} matches one of {result.baseline}",
            hint="cells match by configuration id and job name, else by the fio parameters "
            "rw, bs, iodepth and numjobs; `vmlab results show RUN` lists them",
        )
    print_comparison(console, result)
    print_checks(console, result, fail_inconclusive=fail_inconclusive)
    if junit is not None:
        from vmlab.report.render import compare_junit  # Jinja and the report models

        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(compare_junit(result, fail_inconclusive=fail_inconclusive))
        console.print(f"JUnit: {escape(str(junit))}")
    if not result.gate_passed(fail_inconclusive=fail_inconclusive):
        raise typer.Exit(GATE_FAILED)


# --------------------------------------------------------------------------------------------


@app.command()
def report(
    runs: RunsArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: <first run>/report)"),
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", help=f"comma-separated: {','.join(FORMATS)}")
    ] = ",".join(FORMATS),
    confidence: ConfidenceOpt = DEFAULT_CONFIDENCE,
    noisy_cv: NoiseOpt = DEFAULT_NOISY_CV * 100,
    results: ResultsOpt = Path("results"),
) -> None:
    """Write reports of runs: Markdown, CSV, JSON, JUnit XML and one offline HTML file.

    With several runs, the later ones are also compared with the first. The HTML holds IOPS and
    bandwidth bars with confidence whiskers, latency percentile curves, each configuration as a
    fraction of the host baseline (when a host-baseline case exists), and the exact command line
    behind every configuration.
    """
    from vmlab.report.model import build_report
    from vmlab.report.render import write_report

    chosen = [f.strip().lower() for f in formats.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}",
            param_hint="--format",
        )
    records = _load(runs, results)
    options = _options(confidence, noisy_cv)
    comparison = (
        compare_runs(records[0], records[1:], options=options) if len(records) > 1 else None
    )
    data = build_report(records, options=options, comparison=comparison)
    target = out if out is not None else records[0].path / "report"
    try:
        written = write_report(data, target, chosen)
    except OSError as exc:
        raise UsageError(
            f"cannot write the report to {exc.filename or target}: {exc.strerror or exc}",
            hint="pass --out a folder you can write to",
        ) from exc
    console = _console()
    if comparison is not None:
        paired = len({(c.candidate, c.case_id, c.job) for c in comparison.cells})
        console.print(
            f"compared with {escape(comparison.baseline)}: {paired} cells paired, "
            f"{len(comparison.unmatched)} without a partner (listed in the report)"
        )
    for path in written:
        console.print(f"wrote {escape(str(path))}")
