"""Creating a new micro cluster: settings, keyrings, monmap, mon and OSD mkfs, first start.

BlueStore's mkfs takes seconds of mostly waiting, so it runs while the mon and the mgr start;
meanwhile the OSD is registered (``ceph osd new``) and the pool made. Every key is in the
mon's mkfs keyring, so the mgr and the OSD authenticate from their first start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import uuid
from dataclasses import asdict

from vmlab.ceph.conf import (
    DAEMONS,
    MGR,
    MON,
    OSD,
    ClusterSettings,
    Layout,
    client_info,
    write_conf,
    write_private,
)
from vmlab.ceph.daemons import DAEMON_ENV, Daemons, tail, wait_for_io
from vmlab.ceph.info import CLIENT_ID, ClusterInfo
from vmlab.ceph.proc import INSTALL_HINT, ceph_cli, check_netns, run_tool
from vmlab.errors import CommandError, HostError
from vmlab.proc import Deadline, ManagedProcess

log = logging.getLogger(__name__)

MON_PORTS_DEFAULT = (3300, 6789)  # (msgr2, legacy msgr1), as in any Ceph cluster
_MON_PORT_SEARCH = range(3301, 3400)  # fallback: (p, p + 100) when the defaults are taken


def create_cluster(
    layout: Layout,
    *,
    bind_addr: str,
    netns: str | None,
    osd_size_bytes: int,
    pool: str,
    deadline: Deadline,
) -> ClusterSettings:
    """Make a new cluster in ``layout`` and start it; returns once the pool answers I/O.

    On failure every daemon is stopped again (what was made stays, for the logs: the next
    ``up`` sees cluster.json without ``complete`` and starts afresh)."""
    for binary in ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "ceph-authtool", "monmaptool"):
        if shutil.which(binary) is None:
            raise HostError(f"{binary} is not installed", hint=INSTALL_HINT)
    check_netns(netns, bind_addr)
    ports = MON_PORTS_DEFAULT if netns else pick_mon_ports(bind_addr)
    settings = ClusterSettings(
        fsid=str(uuid.uuid4()),
        bind_addr=bind_addr,
        mon_v2_port=ports[0],
        mon_v1_port=ports[1],
        osd_size_bytes=osd_size_bytes,
        osd_uuid=str(uuid.uuid4()),
        pool=pool,
        netns=netns,
    )
    log.info("creating micro Ceph cluster %s in %s", settings.fsid, layout.state_dir)
    write_private(layout.settings, settings.to_json())
    for d in DAEMONS:
        layout.data_dir(d).mkdir(parents=True, exist_ok=True)
    for sub in (layout.run_dir, layout.log_dir, layout.state_dir / "crash"):
        sub.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_conf(layout, settings)
    _make_keyrings(layout)
    run_tool(
        ["monmaptool", "--create", "--addv", MON.ident, settings.mon_host,
         "--fsid", settings.fsid, str(layout.monmap)],
        what="monmaptool --create",
    )  # fmt: skip
    run_tool(
        ["ceph-mon", "--cluster", "ceph", "-c", str(layout.conf), "--mkfs", "-i", MON.ident,
         "--monmap", str(layout.monmap), "--keyring", str(layout.mkfs_keyring)],
        what="ceph-mon --mkfs",
    )  # fmt: skip
    fd = os.open(layout.osd_block, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:  # sparse: costs only what is written
        os.ftruncate(fd, settings.osd_size_bytes)
    finally:
        os.close(fd)
    daemons = Daemons(layout)
    try:
        # BlueStore mkfs takes seconds of mostly waiting: overlap it with mon and mgr start.
        with _osd_mkfs(layout, settings) as mkfs:
            for d in (MON, MGR):
                daemons.start(d, netns, deadline)
            daemons.wait_mon(deadline)
            info = client_info(layout, settings)
            ceph_cli(info, ["osd", "new", settings.osd_uuid, OSD.ident], what="osd new")
            ensure_pool(info, settings.pool, 8)
            _wait_mkfs(mkfs, deadline)
        daemons.start(OSD, netns, deadline)
        daemons.wait_osd_active(deadline)
        wait_for_io(info, deadline)
    except BaseException:
        # Everything here is ours and half-made: stop it all; the next `up` starts afresh.
        daemons.stop_all(Deadline(30.0, "stop after a failed up"))
        raise
    layout.mkfs_keyring.unlink(missing_ok=True)
    layout.monmap.unlink(missing_ok=True)
    settings = ClusterSettings(**{**asdict(settings), "complete": True})
    write_private(layout.settings, settings.to_json())
    return settings


def _make_keyrings(layout: Layout) -> None:
    entities = (
        ("mon.", layout.mkfs_keyring, ("mon", "allow *")),
        (f"client.{CLIENT_ID}", layout.admin_keyring,
         ("mon", "allow *", "osd", "allow *", "mgr", "allow *", "mds", "allow *")),
        (f"mgr.{MGR.ident}", layout.data_dir(MGR) / "keyring",
         ("mon", "allow profile mgr", "osd", "allow *", "mds", "allow *")),
        (f"osd.{OSD.ident}", layout.data_dir(OSD) / "keyring",
         ("mon", "allow profile osd", "mgr", "allow profile osd", "osd", "allow *")),
    )  # fmt: skip
    for entity, path, caps in entities:
        argv = ["ceph-authtool", "--create-keyring", str(path), "--gen-key", "-n", entity]
        for kind, cap in zip(caps[::2], caps[1::2], strict=True):
            argv += ["--cap", kind, cap]
        run_tool(argv, what=f"ceph-authtool {entity}")
        path.chmod(0o600)
    # The mon imports every key of its mkfs keyring into its auth database: mgr and osd
    # can authenticate from their first start, without `ceph auth add` round trips.
    for _entity, path, _caps in entities[1:]:
        run_tool(
            ["ceph-authtool", str(layout.mkfs_keyring), "--import-keyring", str(path)],
            what="ceph-authtool --import-keyring",
        )


def _osd_mkfs(layout: Layout, settings: ClusterSettings) -> ManagedProcess:
    """``ceph-osd --mkfs`` as a child that runs while the mon and mgr start (killed on
    leaving the ``with`` block if it has not finished)."""
    argv = [
        "ceph-osd", "--cluster", "ceph", "-c", str(layout.conf), "--no-mon-config",
        "--mkfs", "-i", OSD.ident, "--osd-uuid", settings.osd_uuid,
        "--monmap", str(layout.monmap), "--osd-objectstore", "bluestore",
    ]  # fmt: skip
    return ManagedProcess(
        argv,
        log_path=layout.log_dir / "ceph-osd.0.mkfs.log",
        what="ceph-osd --mkfs",
        env={**os.environ, **DAEMON_ENV},
        stop_signal=signal.SIGKILL,
        grace_s=10.0,
        missing_hint=INSTALL_HINT,
    )


def _wait_mkfs(mkfs: ManagedProcess, deadline: Deadline) -> None:
    """Until ``ceph-osd --mkfs`` exits; CommandError (with its output) unless it succeeded."""
    rc = mkfs.wait(max(1.0, deadline.remaining_s()))
    if rc is None:
        raise CommandError(
            "ceph-osd --mkfs timed out", argv=mkfs.argv, returncode=None,
            output=tail(mkfs.log_path), log=mkfs.log_path,
        )  # fmt: skip
    if rc != 0:
        raise CommandError(
            "ceph-osd --mkfs failed", argv=mkfs.argv, returncode=rc,
            output=tail(mkfs.log_path), log=mkfs.log_path,
            hint="BlueStore needs O_DIRECT: keep the state dir off tmpfs",
        )  # fmt: skip


def ensure_pool(info: ClusterInfo, name: str, pg_num: int = 8) -> None:
    """Create a size-1 replicated pool with the rbd application, unless it exists."""
    # Both commands are idempotent: "already exists" / "already enabled" exit 0.
    ceph_cli(
        info,
        ["osd", "pool", "create", name, str(pg_num), str(pg_num), "replicated", "--size", "1"],
        what="osd pool create",
    )
    ceph_cli(info, ["osd", "pool", "application", "enable", name, "rbd"], what="app enable")


def _port_free(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == 99:  # EADDRNOTAVAIL
                raise HostError(
                    f"{addr} is not an address of this host",
                    hint="bind to 127.0.0.1, or pass --netns with a namespace that has it",
                ) from exc
            return False
    return True


def pick_mon_ports(bind_addr: str) -> tuple[int, int]:
    """The standard mon ports (3300, 6789) if free on ``bind_addr``, else (p, p + 100)."""
    if all(_port_free(bind_addr, p) for p in MON_PORTS_DEFAULT):
        return MON_PORTS_DEFAULT
    for port in _MON_PORT_SEARCH:
        if _port_free(bind_addr, port) and _port_free(bind_addr, port + 100):
            return port, port + 100
    raise HostError(
        f"no free monitor ports on {bind_addr} (tried 3300/6789 and 3301-3399 with +100)",
        hint="stop other Ceph clusters (`vmlab ceph down`) or use another --bind address",
    )


def wipe_cluster_files(layout: Layout) -> None:
    """Delete what a half-made cluster left (not the state dir itself, nor its lock)."""
    for sub in ("mon", "mgr", "osd", "log", "crash"):
        shutil.rmtree(layout.state_dir / sub, ignore_errors=True)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    for f in (layout.conf, layout.admin_keyring, layout.settings, layout.images,
              layout.images.with_name("images.json.lock"), layout.monmap,
              layout.mkfs_keyring):  # fmt: skip
        f.unlink(missing_ok=True)
