"""`vmlab results`: list, show, remove and reindex the runs of a results root.

A RUN argument is a run id (a directory name under --results) or the path of a run directory.
Errors are raised as VmlabError; vmlab.cli prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmlab.cli.runlist import list_runs_command, warn_skipped
from vmlab.errors import ResultError
from vmlab.report.stages import Stage, case_stages, overhead_s
from vmlab.report.stats import StatOptions
from vmlab.results.index import default_index_path, index_run, reindex, remove_run
from vmlab.results.rundir import resolve_run, scan_run

app = typer.Typer(
    help="The results store: run directories and their SQLite index.", no_args_is_help=True
)

ResultsOpt = Annotated[
    Path,
    typer.Option("--results", help="results root: run directories and index.sqlite"),
]
RunArg = Annotated[str, typer.Argument(help="run id (under --results) or run directory path")]


def _console() -> Console:
    return Console(highlight=False)


@app.command("list")
def list_command(results: ResultsOpt = Path("results")) -> None:
    """List the runs, newest first (new or changed run directories are indexed first)."""
    list_runs_command(results)


@app.command()
def show(run: RunArg, results: ResultsOpt = Path("results")) -> None:
    """Show one run: where and when it ran, its configurations, and mean results."""
    # The report modules (fio models, Jinja) load here, not for every command.
    from vmlab.report.model import build_run
    from vmlab.report.render import result_rows

    console = _console()
    record = scan_run(resolve_run(results, run))
    view = build_run(record, StatOptions(), details=False)
    for key, value in (
        ("run", view.id),
        ("name", view.name),
        ("status", view.status),
        ("source", view.source),
        ("started", view.started or "-"),
        ("finished", view.finished or "-"),
        ("host", view.host or "-"),
        ("directory", view.path),
    ):
        console.print(f"[bold]{key:10}[/] {escape(value)}")
    cases = Table(title="configurations", title_justify="left")
    for column in ("configuration", "status", "parameters"):
        cases.add_column(column)
    for case in view.cases:
        params = " ".join(f"{k}={v}" for k, v in case.params.items())
        status = case.status + (f": {case.error}" if case.error else "")
        cases.add_row(escape(case.id), escape(status), escape(params))
    console.print(cases)
    _print_stages(console, {c.case_id: case_stages(c.timings) for c in record.cases})
    rows = result_rows(view)
    if not rows:
        console.print("no measured repetitions")
        return
    table = Table(title="results (mean ± 95% CI)", title_justify="left")
    stopped = any(r.stopped for r in rows)
    columns = ("configuration", "job", "I/O", "n", "IOPS", "clat mean", "clat p99", "× limit")
    for column in (*columns, "flags", *(("stopped",) if stopped else ())):
        table.add_column(column)
    for r in rows:
        table.add_row(
            escape(r.case),
            escape(r.job),
            r.direction,
            r.n,
            escape(r.iops),
            escape(r.clat_mean),
            escape(r.clat_p99),
            r.of_limit,
            f"[yellow]{escape(r.flags)}[/]" if r.flags else "",
            *((escape(r.stopped or "-"),) if stopped else ()),
        )
    console.print(table)


def _print_stages(console: Console, stages: dict[str, list[Stage]]) -> None:
    """Where each case's seconds went, stage by stage (cases that recorded timings only)."""
    stages = {case: found for case, found in stages.items() if found}
    if not stages:
        return
    names = list(dict.fromkeys(s.name for found in stages.values() for s in found))
    table = Table(title="stages (seconds)", title_justify="left")
    table.add_column("stage")
    for case in stages:
        table.add_column(escape(case), justify="right")
    for name in names:
        cells = [
            next((f"{s.seconds:.2f}" for s in found if s.name == name), "-")
            for found in stages.values()
        ]
        table.add_row(escape(name), *cells)
    overheads = [overhead_s(found) for found in stages.values()]
    measured = [sum(s.seconds for s in found if not s.overhead) for found in stages.values()]
    table.add_row("[bold]overhead[/]", *(f"{o:.2f}" for o in overheads))
    table.add_row(
        "[bold]wall / asked runtime[/]",
        *(
            f"{(o + m) / m:.2f}×" if m > 0 else "-"
            for o, m in zip(overheads, measured, strict=True)
        ),
    )
    console.print(table)


@app.command("rm")
def rm_command(
    run: RunArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    results: ResultsOpt = Path("results"),
) -> None:
    """Delete a run: its directory and its index rows."""
    path = resolve_run(results, run)
    db = default_index_path(results)
    index_run(db, path)  # the index knows it, with this path
    if not yes:
        typer.confirm(f"delete {path} and its index entry?", abort=True)
    removed = remove_run(db, path.name, delete_files=True)
    _console().print(f"deleted {escape(str(removed))}")


@app.command("reindex")
def reindex_command(results: ResultsOpt = Path("results")) -> None:
    """Rebuild the index from the run directories (they are the truth; the index is a cache)."""
    console = _console()
    if not results.is_dir():
        raise ResultError(
            "no such results directory", path=results, hint="pass --results DIR (default: results)"
        )
    result = reindex(results)
    warn_skipped(console, dict(result.skipped))
    console.print(
        f"indexed {len(result.indexed)} runs in {escape(str(default_index_path(results)))}"
        + (f"; dropped {len(result.removed)} that no longer exist" if result.removed else "")
    )
