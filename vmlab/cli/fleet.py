"""`vmlab fleet`: run a spec on every host of an Ansible inventory (vmlab.cli mounts ``app``).

Errors are raised as VmlabError; vmlab.cli prints them and exits (1, or 2 for a bad spec).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmlab.cli.app import err, out
from vmlab.cli.spec import YesOpt, check_choice
from vmlab.errors import VmlabError
from vmlab.fleet.events import HostUpdate
from vmlab.fleet.run import (
    DEFAULT_HOST_TIMEOUT_S,
    FleetOptions,
    FleetOutcome,
    bench_args,
    parse_extra_vars,
    run_fleet,
)

app = typer.Typer(no_args_is_help=True, help="Run a spec on every host of an Ansible inventory.")


_MARK = {
    "running": "[cyan]…[/]",
    "ok": "[green]✓[/]",
    "changed": "[green]✓[/]",
    "skipped": "[dim]-[/]",
    "failed": "[red]✗[/]",
    "unreachable": "[red]✗[/]",
    "done": "[green]✓[/]",
}


class RichFleetEvents:
    """One line per host, updated as its tasks start and end."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.rows: dict[str, TaskID] = {}
        self.failed: set[str] = set()
        self._lock = threading.Lock()

    def host_update(self, update: HostUpdate) -> None:
        with self._lock:
            row = self.rows.get(update.host)
            if row is None:
                row = self.rows[update.host] = self.progress.add_task("", total=None)
            if update.host in self.failed:
                return  # keep the failure on screen
            text = f"[bold]{escape(update.host)}[/]  {_MARK[update.state]} {escape(update.task)}"
            if update.state in ("failed", "unreachable"):
                self.failed.add(update.host)
                first = (update.detail or "").splitlines()[0] if update.detail else ""
                text = f"[bold]{escape(update.host)}[/]  [red]{update.state}:[/] {escape(first)}"
                self.progress.update(row, description=text, total=1, completed=1)
                return
            self.progress.update(row, description=text)

    def finish(self) -> None:
        with self._lock:
            for host, row in self.rows.items():
                if host not in self.failed:
                    self.progress.update(
                        row,
                        description=f"[bold]{escape(host)}[/]  {_MARK['done']} done",
                        total=1,
                        completed=1,
                    )


class PlainFleetEvents:
    """One line per task start and per failure, for CI logs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def host_update(self, update: HostUpdate) -> None:
        if update.state in ("ok", "changed", "skipped"):
            return
        line = f"{update.host}: {update.task}: {update.state}"
        if update.detail:
            line += f": {update.detail}"
        with self._lock:
            print(line, flush=True)


def _summary(outcome: FleetOutcome) -> None:
    table = Table(title=f"fleet run: {outcome.run.path}", title_justify="left")
    for column in ("host", "status", "cases", "run on host", "error"):
        table.add_column(column)
    for h in outcome.hosts:
        color = "green" if h.ok else "red"
        first = (h.error or "").splitlines()[0] if h.error else ""
        table.add_row(
            escape(h.host),
            f"[{color}]{h.status}[/]",
            str(len(h.cases)),
            escape(h.run_id or "-"),
            escape(first),
        )
    out.print(table)
    _metrics_table(outcome)


def _metrics_table(outcome: FleetOutcome) -> None:
    from vmlab.cli.tables import print_results
    from vmlab.results.rundir import scan_run

    record = scan_run(outcome.run.path)
    print_results(
        [(s.case_id, s.job, s.repetition, dict(s.metrics)) for s in record.samples],
        title="",
        case_column="host_configuration",
    )


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="spec file (YAML), copied to every host")],
    inventory: Annotated[
        Path, typer.Option("-i", "--inventory", help="Ansible inventory of the hosts")
    ],
    results: Annotated[Path, typer.Option(help="where the merged run directory goes")] = Path(
        "results"
    ),
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Ansible host pattern: only these hosts")
    ] = None,
    forks: Annotated[
        int | None, typer.Option(min=1, help="hosts benchmarked at once (Ansible forks)")
    ] = None,
    runtime: Annotated[
        int | None, typer.Option("--runtime", min=1, help="seconds per fio job (on every host)")
    ] = None,
    timeout_scale: Annotated[
        float | None, typer.Option(min=0.1, help="multiply every vmlab deadline on the hosts")
    ] = None,
    accel: Annotated[str | None, typer.Option(help="force kvm or tcg on every host")] = None,
    extra_var: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-var",
            "-e",
            help="playbook variable KEY=VALUE (VALUE read as YAML), e.g. vmlab_bin=/usr/bin/vmlab",
        ),
    ] = None,
    host_timeout: Annotated[
        int, typer.Option(min=60, help="seconds before a host's `vmlab bench` is stopped")
    ] = DEFAULT_HOST_TIMEOUT_S,
    ci: Annotated[bool, typer.Option("--ci", help="plain logs, no live display")] = False,
    yes: YesOpt = False,
) -> None:
    """Run SPEC on every host of INVENTORY (playbooks/bench.yml) and merge the results.

    Each host runs `vmlab bench SPEC --ci --yes` (a matrix of more than 256 cases needs --yes
    here); its run directory comes back and is merged into one run whose cases are
    `<host>_<case>` (params gain `host`), so `vmlab report RUN` and `vmlab compare` work
    across hosts. A failed host (unreachable, vmlab error, fetch failed)
    is listed with its error in the output and in fleet.json; the others carry on.

    Exit codes: 0 every host ok; 1 a host failed, or a vmlab error; 2 bad spec or arguments;
    130 interrupted (ansible-playbook is stopped; what came back is merged).
    """
    from vmlab.spec import CONFIRM_CASES

    check_choice(accel, ("kvm", "tcg"), "--accel")
    options = FleetOptions(
        inventory=inventory,
        spec=spec,
        results_root=results,
        limit=limit,
        forks=forks,
        bench_args=bench_args(runtime_s=runtime, timeout_scale=timeout_scale, accel=accel),
        extra_vars=parse_extra_vars(extra_var or []),
        host_timeout_s=host_timeout,
        max_cases=None if yes else CONFIRM_CASES,
    )
    plain = ci or not sys.stdout.isatty()
    try:
        if plain:
            outcome = run_fleet(options, PlainFleetEvents())
        else:
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=out,
            ) as progress:
                events = RichFleetEvents(progress)
                try:
                    outcome = run_fleet(options, events)
                finally:
                    events.finish()
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted: ansible-playbook was stopped; what came back is merged "
            f"under {escape(str(results))}[/]"
        )
        raise typer.Exit(130) from None
    _summary(outcome)
    for h in outcome.failed:
        err.print(f"[red]{escape(h.host)}: {h.status}[/]: {escape(h.error or '')}")
    out.print(f"report: vmlab report {escape(str(outcome.run.path))}")
    if outcome.failed:
        raise VmlabError(
            f"{len(outcome.failed)} of {len(outcome.hosts)} hosts failed: "
            + ", ".join(h.host for h in outcome.failed),
            hint=f"see {outcome.run.path / 'fleet.json'} and "
            f"{outcome.run.path / 'ansible' / 'artifacts'} (ansible's output)",
        )
