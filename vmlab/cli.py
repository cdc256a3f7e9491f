"""The `vmlab` command. The only module that prints errors or exits."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmlab import __version__
from vmlab.errors import SpecError, VmlabError

app = typer.Typer(
    help="Benchmark virtualized storage on KVM/QEMU: a matrix of guests, fio "
    "inside, statistics out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(
    help="The default guest image (kernel + initramfs with fio and sshd).", no_args_is_help=True
)
host_app = typer.Typer(help="What this host can run.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(host_app, name="host")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SpecArg = Annotated[
    Path | None,
    typer.Argument(
        help="spec file (YAML); without one, the embedded default lab", show_default=False
    ),
]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("qemu.qmp").setLevel(max(level, logging.WARNING))
    logging.getLogger("paramiko").setLevel(max(level, logging.WARNING))


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
    ] = 0,
) -> None:
    _setup_logging(verbose)


@app.command()
def version() -> None:
    """Print vmlab's version."""
    out.print(__version__)


def _load(spec_path: Path | None, runtime_s: int | None) -> Any:
    from vmlab.spec import default_lab, load_spec

    spec = load_spec(spec_path) if spec_path else default_lab()
    if runtime_s is not None:
        spec = spec.model_copy(update={"runtime_s": runtime_s})
    return spec


@app.command()
def render(
    spec_path: SpecArg = None,
    case: Annotated[str | None, typer.Option(help="only this case id")] = None,
    accel: Annotated[str, typer.Option(help="accelerator to render for")] = "tcg",
    launcher: Annotated[
        str | None, typer.Option(help="qemu (argv) or libvirt (domain XML); default: the spec's")
    ] = None,
) -> None:
    """Print, per case, the exact QEMU argv that would run, without running anything."""
    from vmlab.guest.boot import preview_boot
    from vmlab.plan import plan
    from vmlab.render.libvirt import preview_runtime, render_libvirt
    from vmlab.render.model import GuestRuntime
    from vmlab.render.qemu import nic_plans, render_qemu
    from vmlab.storage import preview_disks

    spec = _load(spec_path, None)
    cases = plan(spec)
    if case is not None:
        cases = [c for c in cases if c.id == case]
        if not cases:
            raise VmlabError(
                f"no case {case!r} in the plan", hint="run `vmlab render SPEC` to list the case ids"
            )
    boot = _boot_placeholder()
    for index, c in enumerate(cases, start=1):
        out.print(
            f"[bold]# case {index}/{len(cases)}: {c.id}[/]  "
            + "  ".join(f"{k}={v}" for k, v in c.params.items())
        )
        sources = {}
        for name, preview in preview_disks(c).items():
            if preview.title:
                out.print(f"# disk {name}: {preview.title}:", markup=False)
            if preview.argv:
                out.print(" \\\n  ".join(_argv_lines(list(preview.argv))), markup=False)
            if preview.steps:
                out.print(preview.steps, markup=False)
            sources[name] = preview.source
        serial_log = Path(f"<run>/cases/{c.id}/serial.log")
        if (launcher or c.variant.launcher) == "libvirt":
            domain = render_libvirt(
                c,
                accel=accel,
                boot=preview_boot(c.variant.guest, boot),
                disks=sources,
                runtime=preview_runtime(c.id, serial_log=serial_log),
            )
            out.print(domain.xml, markup=False)
        else:
            rt = GuestRuntime(
                qmp_socket=Path("<guest-dir>/qmp.sock"),
                serial_log=serial_log,
                pidfile=Path("<guest-dir>/qemu.pid"),
                ssh_port=10022,
                nics=nic_plans(c.variant.guest, None),
            )
            rendered = render_qemu(
                c,
                qemu="qemu-system-x86_64",
                accel=accel,
                boot=preview_boot(c.variant.guest, boot),
                disks=sources,
                runtime=rt,
            )
            out.print(" \\\n  ".join(_argv_lines(rendered.argv)), markup=False)
        out.print(f"# jobs: {', '.join(f'{j.name} ({j.runtime_s} s)' for j in c.jobs)}\n")


def _argv_lines(argv: list[str]) -> list[str]:
    """Shell-quoted argv, an option and its value per line, for people to read and paste."""
    import shlex

    lines: list[str] = [shlex.quote(argv[0])]
    rest = argv[1:]
    while rest:
        token = rest.pop(0)
        if token.startswith("-") and rest and not rest[0].startswith("-"):
            lines.append(f"{shlex.quote(token)} {shlex.quote(rest.pop(0))}")
        else:
            lines.append(shlex.quote(token))
    return lines


def _boot_placeholder() -> Any:
    from vmlab.guest.image import find_image
    from vmlab.render.model import BootImage

    image = find_image()
    if image is None:
        return BootImage(
            Path("<image>/vmlinux"),
            Path("<image>/initrd.img"),
            "<image cmdline> vmlab.authkey=<lab key> vmlab.nonce=<per boot>",
        )
    return BootImage(
        image.kernel,
        image.initrd,
        f"{image.cmdline} vmlab.authkey=<lab key> vmlab.nonce=<per boot>",
    )


class RichEvents:
    """Progress for a person at a terminal."""

    def __init__(self, progress: Progress, total_jobs: int) -> None:
        self.progress = progress
        self.overall = progress.add_task("bench", total=total_jobs)
        self.current: Any = None

    def case_started(self, case: Any, index: int, total: int) -> None:
        self.progress.update(self.overall, description=f"[{index}/{total}] {case.id}")

    def stage(self, case: Any, what: str) -> None:
        self.progress.update(self.overall, description=f"{case.id}: {what}")

    def job_finished(self, case: Any, job: str, repetition: int, metrics: dict[str, float]) -> None:
        self.progress.advance(self.overall)

    def case_finished(self, case: Any, status: str, error: str | None) -> None:
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

    def case_started(self, case: Any, index: int, total: int) -> None:
        print(f"case {index}/{total}: {case.id}", flush=True)

    def stage(self, case: Any, what: str) -> None:
        print(f"  {case.id}: {what}", flush=True)

    def job_finished(self, case: Any, job: str, repetition: int, metrics: dict[str, float]) -> None:
        if "received_bits_per_s" in metrics:  # an iperf3 net job
            summary = f"{metrics['received_bits_per_s'] / 1e9:.2f} Gbit/s"
        else:
            summary = f"{metrics.get('read_iops', 0) + metrics.get('write_iops', 0):.0f} IOPS"
        print(f"  {case.id}: {job} r{repetition}: {summary}", flush=True)

    def case_finished(self, case: Any, status: str, error: str | None) -> None:
        print(f"  {case.id}: {status}{': ' + error if error else ''}", flush=True)

    def notice(self, text: str) -> None:
        print(f"WARNING: {text}", flush=True)


def _print_network_table(results: list[Any]) -> None:
    if not results:
        return
    table = Table(title="network (iperf3, guest as client)", title_justify="left")
    for name, justify in (
        ("configuration", "left"),
        ("job", "left"),
        ("received Gbit/s", "right"),
        ("retransmits", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(
            r.case_id,
            f"{r.job} r{r.repetition}",
            f"{r.metrics['received_bits_per_s'] / 1e9:.2f}",
            f"{r.metrics.get('retransmits', 0):.0f}",
        )
    out.print(table)


def _print_table(outcome: Any, title: str) -> None:
    from vmlab.report.table import build_rows

    # r0 is the warm-up: stored, never counted
    counted = [r for r in outcome.results if r.repetition]
    fio = [r for r in counted if "received_bits_per_s" not in r.metrics]
    _print_network_table([r for r in counted if "received_bits_per_s" in r.metrics])
    rows = build_rows([(r.case_id, r.job, r.metrics) for r in fio])
    with_host = any(r.of_host is not None for r in rows)
    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("configuration", "left"),
        ("job", "left"),
        ("IOPS", "right"),
        ("lat mean µs", "right"),
        ("lat p99 µs", "right"),
        ("× first", "right"),
        *((("of host", "right"),) if with_host else ()),
    ):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(
            row.case_id,
            row.job,
            f"{row.iops:,.0f}",
            "-" if row.lat_mean_us is None else f"{row.lat_mean_us:,.1f}",
            "-" if row.lat_p99_us is None else f"{row.lat_p99_us:,.1f}",
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            *(("-" if row.of_host is None else f"{row.of_host:.0%}",) if with_host else ()),
        )
    out.print(table)


@app.command()
def bench(
    spec_path: SpecArg = None,
    runtime: Annotated[
        int | None,
        typer.Option("--runtime", min=1, help="seconds per fio job (overrides the spec)"),
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
) -> None:
    """Run a spec (or the embedded default lab) and print the comparison table."""
    from vmlab.bench import BenchOptions, run_bench
    from vmlab.guest.image import build_image
    from vmlab.host import check_host
    from vmlab.plan import plan
    from vmlab.results.rundir import RunDir

    if accel not in (None, "kvm", "tcg"):
        raise typer.BadParameter("expected kvm or tcg", param_hint="--accel")
    resumed = RunDir.open(resume) if resume else None
    if resumed is not None:
        if spec_path is not None or runtime is not None:
            raise VmlabError(
                "--resume runs the spec stored in the run directory",
                hint="drop the SPEC argument and --runtime when resuming",
            )
        spec = resumed.spec()
    else:
        spec = _load(spec_path, runtime)
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
    if plain:
        print(f"host: QEMU {facts.qemu_version}, accel {facts.accel} ({facts.accel_reason})")
    else:
        out.print(
            f"host: QEMU {facts.qemu_version}, accel [bold]{facts.accel}[/] ({facts.accel_reason})"
        )
    if launcher not in (None, "qemu", "libvirt"):
        raise typer.BadParameter("expected qemu or libvirt", param_hint="--launcher")
    options = BenchOptions(
        results_root=results,
        timeout_scale=timeout_scale,
        accel=accel,
        launcher=launcher,
        libvirt_uri=libvirt_uri,
        skip_unsupported=skip_unsupported,
    )
    reps = spec.repeat + spec.warmup
    total = sum(len(c.jobs) for c in plan(spec)) * reps + len(spec.jobs) * reps * spec.baseline
    try:
        if plain:
            outcome = run_bench(
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
                outcome = run_bench(
                    spec,
                    facts=facts,
                    image=image,
                    options=options,
                    events=RichEvents(progress, total),
                    resume=resumed,
                )
    except KeyboardInterrupt:
        err.print(f"[yellow]{INTERRUPTED}[/]")
        raise typer.Exit(130) from None
    _print_table(outcome, f"{spec.name}: {outcome.run.path}")
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


@host_app.command("check")
def host_check(
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    probe: Annotated[bool, typer.Option(help="boot a probe guest to test KVM")] = True,
) -> None:
    """QEMU version, the accelerator that really works, and what is missing."""
    from vmlab.guest.image import build_image, find_image
    from vmlab.host import check_host

    kernel = None
    if probe:  # KVM is proven with the guest kernel vmlab boots: build it if there is none
        try:
            image = find_image() or build_image(progress=lambda m: err.print(f"[dim]image: {m}[/]"))
            kernel = image.kernel
        except VmlabError as exc:
            err.print(f"[yellow]cannot build the guest image to probe KVM with:[/] {exc}")
    facts = check_host(probe=probe, use_cache=False, kernel=kernel)
    if json_out:
        print(facts.model_dump_json(indent=2))
        return
    out.print(f"kernel        {facts.kernel}, {facts.cpus} CPUs, {facts.memory_mib} MiB")
    out.print(
        f"QEMU          {facts.qemu_version or '[red]not installed[/]'}"
        f"{'  (' + facts.qemu + ')' if facts.qemu else ''}"
    )
    out.print(f"accelerator   [bold]{facts.accel}[/]: {escape(facts.accel_reason)}")
    out.print(f"KVM           {escape(facts.kvm_note)}")
    out.print(f"fio (host)    {facts.fio_version or 'not installed'}")
    out.print(f"hugepages 2M  {facts.hugepages_2m_free} free of {facts.hugepages_2m_total}")
    spdk = f"{facts.spdk_version} ({facts.spdk_vhost}, from {facts.spdk_found_by})"
    out.print(f"SPDK          {spdk if facts.spdk_vhost else 'not found'}")
    out.print(f"IOMMU groups  {facts.iommu_groups}")
    if facts.missing:
        table = Table(title="missing", title_justify="left")
        for col in ("what", "needed for", "fix"):
            table.add_column(col)
        for m in facts.missing:
            table.add_row(m.what, m.needed_for, m.fix)
        out.print(table)


@image_app.command("build")
def image_build(
    kind: Annotated[
        str,
        typer.Option(help="default (the initramfs guest) or rootfs (a Debian ext4 root disk)"),
    ] = "default",
    systemd: Annotated[
        bool, typer.Option(help="rootfs: boot systemd, not vmlab's tiny init")
    ] = False,
    cloud_init: Annotated[
        bool, typer.Option(help="rootfs: with cloud-init (NoCloud seed); implies --systemd")
    ] = False,
    disk: Annotated[
        bool,
        typer.Option(
            help="rootfs: also a firmware-bootable qcow2 (MBR, syslinux, kernel, root): use it "
            "as `image: {kind: cloud, source: PATH}`"
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) a guest image and print where it is."""
    from vmlab.guest.image import build_image

    def progress(message: str) -> None:
        err.print(f"[dim]{escape(message)}[/]")

    if kind not in ("default", "rootfs"):
        raise typer.BadParameter("expected default or rootfs", param_hint="--kind")
    if kind == "default":
        if systemd or cloud_init or disk:
            raise typer.BadParameter(
                "--systemd, --cloud-init and --disk build a rootfs: add --kind rootfs",
                param_hint="--kind",
            )
        out.print(str(build_image(force=force, progress=progress).root))
        return
    from vmlab.guest.diskimage import build_disk_image
    from vmlab.guest.rootfs import build_rootfs

    rootfs = build_rootfs(
        systemd=systemd or cloud_init, cloud_init=cloud_init, force=force, progress=progress
    )
    out.print(str(rootfs.root))
    if disk:
        out.print(str(build_disk_image(rootfs)))


@image_app.command("info")
def image_info() -> None:
    """Show the cached default guest image, if any."""
    from vmlab.guest.image import find_image

    image = find_image()
    if image is None:
        raise VmlabError("no guest image is built yet", hint="run `vmlab image build`")
    for key, value in (
        ("path", image.root),
        ("key", image.key),
        ("kernel", image.kernel),
        ("kernel version", image.kernel_version),
        ("initrd", image.initrd),
        ("fio", image.fio_version),
        ("host key", image.host_key),
        ("cmdline", image.cmdline),
    ):
        out.print(f"{key:15} {value}")


def _mount_subcommands() -> None:
    """Command groups that live beside the code they drive."""
    from vmlab.ceph.cli import app as ceph_app
    from vmlab.fleet.cli import app as fleet_app
    from vmlab.report.cli import app as report_app
    from vmlab.results.cli import app as results_app

    app.add_typer(ceph_app, name="ceph", help="A micro Ceph cluster for labs and tests.")
    app.add_typer(results_app, name="results", help="Stored runs: list, show, rm, reindex.")
    app.add_typer(fleet_app, name="fleet", help="Run a spec on every host of an Ansible inventory.")
    app.registered_commands += report_app.registered_commands  # import, compare, report


INTERRUPTED = (
    "interrupted: everything vmlab started has been stopped; finished cases are kept "
    "(resume with `vmlab bench --resume results/<run-id>`)"
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: Typer reports usage errors; vmlab's own errors become one clear message."""
    _mount_subcommands()
    try:
        app(args=argv)
    except VmlabError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        if exc.hint:
            err.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        sys.exit(2 if isinstance(exc, SpecError) else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
