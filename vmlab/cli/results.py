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

from vmlab.errors import ResultError
from vmlab.report.model import build_run
from vmlab.report.render import result_rows
from vmlab.report.stats import StatOptions
from vmlab.results.index import (
    default_index_path,
    index_run,
    list_runs,
    reindex,
    remove_run,
    sync_index,
)
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


def _warn_skipped(console: Console, skipped: dict[str, str]) -> None:
    for path, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")


@app.command("list")
def list_command(results: ResultsOpt = Path("results")) -> None:
    """List the runs, newest first (new or changed run directories are indexed first)."""
    console = _console()
    if not results.is_dir():
        console.print(f"no runs: {escape(str(results))} does not exist")
        return
    synced = sync_index(results)
    _warn_skipped(console, dict(synced.skipped))
    rows = list_runs(default_index_path(results))
    if not rows:
        console.print(f"no runs under {escape(str(results))}")
        return
    table = Table(title=f"runs in {escape(str(results))}", title_justify="left")
    for column, justify in (
        ("run", "left"),
        ("name", "left"),
        ("status", "left"),
        ("source", "left"),
        ("started", "left"),
        ("cases", "right"),
        ("samples", "right"),
        ("host", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        color = {"complete": "green", "failed": "red", "interrupted": "yellow"}.get(row.status)
        status = f"[{color}]{escape(row.status)}[/]" if color else escape(row.status)
        table.add_row(
            escape(row.id),
            escape(row.name),
            status,
            row.source,
            escape(row.started or "-"),
            str(row.cases),
            str(row.samples),
            escape(row.host or "-"),
        )
    console.print(table)


@app.command()
def show(run: RunArg, results: ResultsOpt = Path("results")) -> None:
    """Show one run: where and when it ran, its configurations, and mean results."""
    console = _console()
    record = scan_run(resolve_run(results, run))
    view = build_run(record, StatOptions(), curves=False)
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
    rows = result_rows(view)
    if not rows:
        console.print("no measured repetitions")
        return
    table = Table(title="results (mean ± 95% CI)", title_justify="left")
    stopped = any(r.stopped for r in rows)
    columns = ("configuration", "job", "n", "IOPS", "mean latency", "p99", "× limit", "flags")
    for column in (*columns, *(("stopped",) if stopped else ())):
        table.add_column(column)
    for r in rows:
        table.add_row(
            escape(r.case),
            escape(r.job),
            r.n,
            escape(r.iops),
            escape(r.lat_mean),
            escape(r.lat_p99),
            r.of_limit,
            f"[yellow]{escape(r.flags)}[/]" if r.flags else "",
            *((escape(r.stopped or "-"),) if stopped else ()),
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
    _warn_skipped(console, dict(result.skipped))
    console.print(
        f"indexed {len(result.indexed)} runs in {escape(str(default_index_path(results)))}"
        + (f"; dropped {len(result.removed)} that no longer exist" if result.removed else "")
    )
