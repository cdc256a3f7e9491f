"""`vmlab render`: every case's exact QEMU argv (or libvirt domain XML) and what its disk
servers would start, running nothing."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vmlab.cli.app import out
from vmlab.cli.spec import SpecArg, YesOpt, check_choice, load
from vmlab.errors import UsageError
from vmlab.render.model import BootImage

if TYPE_CHECKING:
    from vmlab.guest.image import GuestImage

app = typer.Typer()


@app.command()
def render(
    spec_path: SpecArg = None,
    case: Annotated[str | None, typer.Option(help="only this case id")] = None,
    accel: Annotated[str, typer.Option(help="accelerator to render for")] = "tcg",
    launcher: Annotated[
        str | None, typer.Option(help="qemu (argv) or libvirt (domain XML); default: the spec's")
    ] = None,
    yes: YesOpt = False,
) -> None:
    """Print, per case, the exact QEMU argv that would run, without running anything."""
    from vmlab.guest.boot import needs_full_image, preview_boot
    from vmlab.plan import plan
    from vmlab.render.libvirt import preview_runtime, render_libvirt
    from vmlab.render.model import GuestRuntime
    from vmlab.render.qemu import nic_plans, render_qemu
    from vmlab.storage import preview_disks

    check_choice(accel, ("tcg", "kvm"), "--accel")
    check_choice(launcher, ("qemu", "libvirt"), "--launcher")
    spec = load(spec_path, None, yes=yes)
    cases = plan(spec)
    if case is not None:
        ids = [c.id for c in cases]
        cases = [c for c in cases if c.id == case]
        if not cases:
            shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} cases)" if len(ids) > 20 else "")
            raise UsageError(
                f"no case {case!r} in the plan (cases: {shown})",
                hint="run `vmlab render SPEC` to list the case ids",
            )
    from vmlab.guest.image import find_image

    image = find_image()
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
                out.print(" \\\n  ".join(argv_lines(list(preview.argv))), markup=False)
            if preview.steps:
                out.print(preview.steps, markup=False)
            sources[name] = preview.source
        serial_log = Path(f"<run>/cases/{c.id}/serial.log")
        boot = boot_placeholder(image, full=needs_full_image(c.variant.guest, c.jobs))
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
            out.print(" \\\n  ".join(argv_lines(rendered.argv)), markup=False)
        out.print(f"# jobs: {', '.join(f'{j.name} ({j.runtime_s} s)' for j in c.jobs)}\n")


def argv_lines(argv: list[str]) -> list[str]:
    """Shell-quoted argv, an option and its value per line, for people to read and paste."""
    lines: list[str] = [shlex.quote(argv[0])]
    rest = argv[1:]
    while rest:
        token = rest.pop(0)
        if token.startswith("-") and rest and not rest[0].startswith("-"):
            lines.append(f"{shlex.quote(token)} {shlex.quote(rest.pop(0))}")
        else:
            lines.append(shlex.quote(token))
    return lines


def boot_placeholder(image: GuestImage | None, *, full: bool) -> BootImage:
    """The default image's boot as `vmlab render` shows it: its files if it is built, else
    placeholders; the full initramfs where ``full`` (the case needs it)."""
    from vmlab.guest.image import INITRD, SLIM_INITRD

    if image is None:
        return BootImage(
            Path("<image>/vmlinux"),
            Path(f"<image>/{INITRD if full else SLIM_INITRD}"),
            "<image cmdline> vmlab.authkey=<lab key> vmlab.nonce=<per boot>",
        )
    return BootImage(
        image.kernel,
        image.initrd_for(full),
        f"{image.cmdline} vmlab.authkey=<lab key> vmlab.nonce=<per boot>",
    )
