"""`vmlab host check`: QEMU, the accelerator that really works here and why, what is missing."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from vmlab.cli.app import err, new_app, out
from vmlab.errors import VmlabError

app = new_app("What this host can run.")


@app.command("check")
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
