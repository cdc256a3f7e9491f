"""`vmlab bench`: run a spec (or the embedded default lab), with progress for a person or
plain lines for CI, and print the comparison table."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from vmlab.cli.app import EXIT_INTERRUPTED, INTERRUPTED, err, out
from vmlab.cli.spec import SpecArg, YesOpt, check_choice, load
from vmlab.cli.tables import print_results
from vmlab.errors import VmlabError
from vmlab.metrics import headline
from vmlab.plan import Case

if TYPE_CHECKING:
    from vmlab.host import HostFacts
    from vmlab.results.rundir import RunDir
    from vmlab.spec import BenchSpec

app = typer.Typer()


def accel_used(facts: HostFacts, forced: str | None, spec_accels: list[str]) -> tuple[str, str]:
    """The accelerator the run's cases use and why: forced (--accel, or accel: in the spec) or
    detected by the probe. What the probe found is kept in the reason when it was overridden."""
    probed = f"probe: {facts.accel}, {facts.accel_reason}"
    if forced is not None:
        return forced, f"forced by --accel {forced}; {probed}"
    chosen = sorted(set(spec_accels) - {"auto"})
    if chosen and "auto" not in spec_accels and len(chosen) == 1:
        return chosen[0], f"forced by accel: {chosen[0]} in the spec; {probed}"
    if chosen:
        per_case = ", ".join(chosen + ([facts.accel] if "auto" in spec_accels else []))
        return "per case", f"{per_case}: accel: in the spec, auto ones detected; {probed}"
    return facts.accel, f"detected; {facts.accel_reason}"


class RichEvents:
    """Progress for a person at a terminal."""

    def __init__(self, progress: Progress, total_jobs: int, runs_per_job: int = 1) -> None:
        self.progress = progress
        self.overall = progress.add_task("bench", total=total_jobs)
        self.runs_per_job = runs_per_job  # the most a job can run: repeat max (+ warm-up)
        self.ran: dict[tuple[str, str], int] = {}

    def case_started(self, case: Case, index: int, total: int) -> None:
        self.progress.update(self.overall, description=f"[{index}/{total}] {case.id}")

    def stage(self, case: Case, what: str) -> None:
        self.progress.update(self.overall, description=f"{case.id}: {what}")

    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None:
        self.ran[case.id, job] = self.ran.get((case.id, job), 0) + 1
        self.progress.advance(self.overall)

    def job_stopped(self, case: Case, job: str, repetitions: int) -> None:
        # the total counted every job at its most: what it did not need is done too
        self.progress.advance(
            self.overall, max(0, self.runs_per_job - self.ran.get((case.id, job), 0))
        )

    def case_finished(self, case: Case, status: str, error: str | None) -> None:
        if status == "failed":
            self.progress.console.print(f"[red]✗ {case.id} failed:[/] {error}")
            self.progress.advance(self.overall, len(case.jobs))
        elif status == "unsupported":
            self.progress.console.print(f"[yellow]- {case.id} not on this host:[/] {error}")
        elif status == "skipped":
            self.progress.advance(self.overall, len(case.jobs))
        else:
            self.progress.console.print(f"[green]✓[/] {case.id}")

    def notice(self, text: str) -> None:
        self.progress.console.print(f"[bold yellow]! {escape(text)}[/]")


class PlainEvents:
    """One line per event, for CI logs."""

    def case_started(self, case: Case, index: int, total: int) -> None:
        print(f"case {index}/{total}: {case.id}", flush=True)

    def stage(self, case: Case, what: str) -> None:
        print(f"  {case.id}: {what}", flush=True)

    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None:
        print(f"  {case.id}: {job} r{repetition}: {headline(metrics)}", flush=True)

    def job_stopped(self, case: Case, job: str, repetitions: int) -> None:
        pass  # the stage line already says how many repetitions and why

    def case_finished(self, case: Case, status: str, error: str | None) -> None:
        print(f"  {case.id}: {status}{': ' + error if error else ''}", flush=True)

    def notice(self, text: str) -> None:
        print(f"WARNING: {text}", flush=True)


def _stops(run: Path) -> dict[tuple[str, str], str]:
    """(case, job) -> "N reason" as the run directory recorded it (resumed cases included)."""
    from vmlab.results.rundir import scan_run

    return {key: f"{s.repetitions} {s.reason}" for key, s in scan_run(run).stops.items()}


def _spec(
    spec_path: Path | None,
    runtime: int | None,
    until_ci: float | None,
    resumed: RunDir | None,
    *,
    nested: bool,
    yes: bool,
) -> BenchSpec:
    """The spec to run: the file's (or the default lab), or the one a resumed run stored."""
    if resumed is not None:
        if spec_path is not None or runtime is not None or until_ci is not None:
            raise VmlabError(
                "--resume runs the spec stored in the run directory",
                hint="drop the SPEC argument, --runtime and --until-ci when resuming",
            )
        spec = resumed.spec()
    else:
        spec = load(spec_path, runtime, until_ci, yes=yes)
    if nested:
        from vmlab.nested.plan import with_nested

        spec = with_nested(spec)
    return spec


@app.command()
def bench(
    spec_path: SpecArg = None,
    runtime: Annotated[
        int | None,
        typer.Option("--runtime", min=1, help="seconds per fio job (overrides the spec)"),
    ] = None,
    until_ci: Annotated[
        float | None,
        typer.Option(
            "--until-ci",
            min=0.01,
            max=100,
            metavar="PCT",
            help="repeat each job until the confidence interval of its mean IOPS is within "
            "±PCT % (overrides the spec's ci_pct; a fixed repeat: N becomes min N (at least 3), "
            "max 20)",
        ),
    ] = None,
    results: Annotated[Path, typer.Option(help="where run directories go")] = Path("results"),
    accel: Annotated[
        str | None,
        typer.Option(
            help="force kvm or tcg (default: KVM only where a guest kernel boots under it; a "
            "run whose guest KVM fails under switches to TCG)"
        ),
    ] = None,
    timeout_scale: Annotated[float, typer.Option(help="multiply every deadline")] = 1.0,
    resume: Annotated[Path | None, typer.Option(help="finish an interrupted run directory")] = None,
    ci: Annotated[bool, typer.Option("--ci", help="plain logs, no progress bars")] = False,
    launcher: Annotated[
        str | None, typer.Option(help="run every case with this launcher: qemu or libvirt")
    ] = None,
    libvirt_uri: Annotated[str, typer.Option(help="libvirt connection URI")] = "qemu:///system",
    skip_unsupported: Annotated[
        bool, typer.Option(help="run the cases this host can; list the others with the reason")
    ] = False,
    junit: Annotated[
        Path | None, typer.Option(help="write JUnit XML: one testcase per case and job")
    ] = None,
    yes: YesOpt = False,
    nested: Annotated[
        bool,
        typer.Option(
            "--nested",
            help="run every case inside a nested L1 host (hypervisor: {kind: nested}): a Debian "
            "kernel with its modules, QEMU and this vmlab, booted by vmlab",
        ),
    ] = False,
) -> None:
    """Run a spec (or the embedded default lab) and print the comparison table."""
    from vmlab.bench import BenchOptions, run_bench
    from vmlab.guest.image import build_image
    from vmlab.host import check_host
    from vmlab.plan import plan
    from vmlab.results.rundir import RunDir

    check_choice(accel, ("kvm", "tcg"), "--accel")
    check_choice(launcher, ("qemu", "libvirt"), "--launcher")
    resumed = RunDir.open(resume) if resume else None
    spec = _spec(spec_path, runtime, until_ci, resumed, nested=nested, yes=yes)
    if shutil.which("qemu-system-x86_64") is None:
        raise VmlabError(
            "qemu-system-x86_64 is not installed", hint="apt-get install qemu-system-x86 qemu-utils"
        )
    plain = ci or not sys.stdout.isatty()
    # The image first: its kernel is what KVM must boot to be chosen.
    image = build_image(
        progress=(lambda m: print(f"image: {m}", flush=True))
        if plain
        else (lambda m: err.print(f"[dim]image: {m}[/]"))
    )
    facts = check_host(kernel=image.kernel)
    used, why = accel_used(facts, accel, [v.accel for v in spec.variants])
    if plain:
        print(f"host: QEMU {facts.qemu_version}, accel {used} ({why})")
    else:
        out.print(f"host: QEMU {facts.qemu_version}, accel [bold]{used}[/] ({escape(why)})")
    options = BenchOptions(
        results_root=results,
        timeout_scale=timeout_scale,
        accel=accel,
        launcher=launcher,
        libvirt_uri=libvirt_uri,
        skip_unsupported=skip_unsupported,
    )
    reps = spec.repeat.max + spec.warmup  # at most: a job may stop earlier
    total = sum(len(c.jobs) for c in plan(spec)) * reps + len(spec.jobs) * reps * spec.baseline
    if spec.nested:
        from vmlab.nested.run import run_nested_bench as run
    else:
        run = run_bench
    try:
        if plain:
            outcome = run(
                spec,
                facts=facts,
                image=image,
                options=options,
                events=PlainEvents(),
                resume=resumed,
            )
        else:
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} jobs"),
                TimeElapsedColumn(),
                console=out,
                transient=True,
            ) as progress:
                outcome = run(
                    spec,
                    facts=facts,
                    image=image,
                    options=options,
                    events=RichEvents(progress, total, reps),
                    resume=resumed,
                )
    except KeyboardInterrupt:
        err.print(f"[yellow]{INTERRUPTED}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print_results(
        [(r.case_id, r.job, r.repetition, r.metrics) for r in outcome.results],
        title=f"{spec.name}: {outcome.run.path}",
        stops=None if spec.repeat.fixed else _stops(outcome.run.path),
    )
    if outcome.accel_switch is not None:
        switch = outcome.accel_switch
        err.print(
            f"[bold yellow]accel: every case ran under TCG[/]: KVM failed under "
            f"{switch.case} ({escape(switch.error)}); recorded in {outcome.run.path}/host.json"
        )
    if junit is not None:
        from vmlab.report.bench_junit import bench_junit, write_bench_junit

        unsupported = outcome.run.status().get("unsupported") or {}
        write_bench_junit(
            junit,
            bench_junit(
                spec.name,
                [(r.case_id, r.job, r.repetition, r.metrics) for r in outcome.results],
                outcome.failed,
                unsupported,
                [j.name for j in spec.jobs] + [j.name for j in spec.net_jobs],
            ),
        )
    if not outcome.ok:
        raise VmlabError(
            f"{len(outcome.failed)} of {len(outcome.cases)} cases failed: "
            + ", ".join(outcome.failed),
            hint=f"see status.json and the logs under {outcome.run.path}/cases/",
        )
