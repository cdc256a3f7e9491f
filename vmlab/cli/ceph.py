"""``vmlab ceph``: a micro Ceph cluster (one mon, mgr, OSD) for labs and tests.

Failures raise VmlabError; the top-level CLI turns them into messages and exit codes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from vmlab import paths
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.conf import DEFAULT_OSD_SIZE_BYTES
from vmlab.ceph.info import ClusterInfo
from vmlab.ceph.status import ClusterStatus
from vmlab.cli.app import out
from vmlab.errors import VmlabError

app = typer.Typer(
    help=(
        "A real single-node Ceph cluster (one mon, one mgr, one BlueStore OSD on a sparse "
        "file) for RBD labs and tests, from Debian's packages, without systemd."
    ),
    no_args_is_help=True,
)

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``2GiB`` or plain bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if match is None:
        raise VmlabError(f"bad size {text!r}", hint="write it like 10G, 512M or 2147483648")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _default_state_dir() -> Path:
    return paths.state_dir() / "ceph"


StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Cluster state (data, keyrings, logs). Default: $VMLAB_STATE/ceph or "
        "~/.local/state/vmlab/ceph.",
    ),
]
Bind = Annotated[
    str, typer.Option("--bind", help="IPv4 address the daemons bind to (for a new cluster).")
]
Netns = Annotated[
    str | None,
    typer.Option("--netns", help="Run the daemons in this existing network namespace."),
]
OsdSize = Annotated[
    str, typer.Option("--osd-size", help="Size of the OSD's sparse file (new cluster), e.g. 10G.")
]
Timeout = Annotated[float, typer.Option("--timeout", help="Give up after this many seconds.")]


def _cluster(
    state_dir: Path | None,
    bind: str = "127.0.0.1",
    netns: str | None = None,
    osd_size: str | None = None,
) -> MicroCluster:
    size = parse_size(osd_size) if osd_size else DEFAULT_OSD_SIZE_BYTES
    return MicroCluster(
        state_dir or _default_state_dir(), bind_addr=bind, netns=netns, osd_size_bytes=size
    )


def _print_info(info: ClusterInfo) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("fsid", info.fsid),
        ("mon host", info.mon_addr),
        ("pool", info.pool),
        ("conf", str(info.conf_path)),
        ("client", f"client.{info.client_id} (keyring {info.keyring_path})"),
        *([("netns", info.netns)] if info.netns else []),
        ("qemu", info.qemu_rbd_uri(info.pool, "IMAGE")),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    out.print(table)


@app.command()
def up(
    state_dir: StateDir = None,
    bind: Bind = "127.0.0.1",
    netns: Netns = None,
    osd_size: OsdSize = "10G",
    timeout: Timeout = 120.0,
) -> None:
    """Create the cluster, or start its stopped daemons; returns when the pool answers I/O."""
    started = time.monotonic()
    info = _cluster(state_dir, bind, netns, osd_size).up(timeout_s=timeout)
    out.print(f"[green]micro Ceph cluster up[/] in {time.monotonic() - started:.1f} s")
    _print_info(info)


@app.command()
def down(state_dir: StateDir = None, timeout: Timeout = 60.0) -> None:
    """Stop the daemons; data and keys stay for the next `up`."""
    cluster = _cluster(state_dir)
    cluster.down(timeout_s=timeout)
    out.print(f"micro Ceph cluster in {escape(str(cluster.state_dir))} stopped")


@app.command()
def status(state_dir: StateDir = None, timeout: Timeout = 30.0) -> None:
    """Daemons (pid, admin socket, RSS), health, pools, images and the conf path."""
    cluster = _cluster(state_dir)
    _print_status(cluster.status(timeout_s=timeout))


@app.command()
def purge(state_dir: StateDir = None, timeout: Timeout = 60.0) -> None:
    """Stop everything and delete the state directory (data, keys, logs)."""
    cluster = _cluster(state_dir)
    cluster.purge(timeout_s=timeout)
    out.print(f"micro Ceph cluster in {escape(str(cluster.state_dir))} purged")


def _print_status(st: ClusterStatus) -> None:
    if not st.exists:
        where = escape(str(st.state_dir))
        out.print(f"no micro Ceph cluster in {where} (create one: vmlab ceph up)")
        return
    daemons = Table(title="daemons")
    for col in ("daemon", "pid", "alive", "state", "RSS MiB"):
        daemons.add_column(col)
    daemons.add_column("admin socket", overflow="fold")
    for d in st.daemons:
        daemons.add_row(
            d.name,
            str(d.pid or "-"),
            "[green]yes[/]" if d.alive else "[red]no[/]",
            escape(d.state or "-"),
            f"{d.rss_kib / 1024:.0f}" if d.rss_kib else "-",
            escape(str(d.asok)),
        )
    out.print(daemons)
    report = st.report
    if report is None:
        why = escape(st.problem or "the monitor is down")
        out.print(f"health: [yellow]{st.health}[/] ({why})")
    else:
        colour = "green" if report.health == "HEALTH_OK" else "yellow"
        out.print(f"health: [{colour}]{report.health}[/]")
        for check in report.health_checks:
            out.print(f"  {escape(check)}")
        gib = 1 << 30
        out.print(
            f"osds: {report.num_up_osds} up, {report.num_in_osds} in of {report.num_osds}; "
            f"used {report.used_bytes / gib:.2f} GiB of {report.total_bytes / gib:.2f} GiB; "
            "pgs: " + (", ".join(f"{n} {s}" for s, n in report.pg_states) or "-")
        )
        pools = Table(title="pools")
        for col in ("pool", "id", "size", "pgs", "applications", "stored MiB", "objects"):
            pools.add_column(col)
        for p in report.pools:
            pools.add_row(
                escape(p.name),
                str(p.pool_id),
                f"{p.size}/{p.min_size}",
                str(p.pg_num),
                escape(",".join(p.applications) or "-"),
                f"{p.stored_bytes / (1 << 20):.1f}",
                str(p.objects),
            )
        out.print(pools)
    if st.images:
        images = Table(title="rbd images")
        for col in ("image", "size MiB", "parent"):
            images.add_column(col)
        for i in st.images:
            images.add_row(
                escape(i.spec), f"{i.size_bytes / (1 << 20):.0f}", escape(i.parent or "-")
            )
        out.print(images)
    out.print(f"conf: {escape(str(st.conf_path))}")
