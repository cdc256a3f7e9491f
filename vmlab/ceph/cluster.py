"""A real single-node micro Ceph cluster for labs and tests: one mon, one mgr, one BlueStore OSD.

Built from Debian 12's packages (``ceph-mon ceph-osd ceph-mgr ceph-common``) without systemd or
containers. Everything lives in one state directory::

    state_dir/
      ceph.conf                  rendered by render_ceph_conf(), the only file clients need
      ceph.client.admin.keyring  mode 0600
      cluster.json               ClusterSettings (fsid, ports, bind address, netns, ...)
      images.json                images vmlab created (see vmlab.ceph.rbd)
      mon/ceph-a  mgr/ceph-x  osd/ceph-0 (block: a sparse file)
      run/                       pidfiles and admin sockets (elsewhere if the path is too long)
      log/                       daemon logs, and each daemon's stdout/stderr

Daemons daemonize themselves and write pidfiles; so once ``up`` returns they are children of
PID 1, which on some hosts (containers, micro VMs) reaps nothing: a killed daemon stays as a
zombie. Liveness is therefore judged by ``/proc/PID/stat`` (state ``Z`` is dead), by the command
line naming our ceph.conf, and by the daemon's admin socket answering -- never by the cluster
maps (a single killed OSD is not marked down for ~900 s, as no peer reports it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vmlab import paths
from vmlab.ceph.daemons import asok_json, rss_kib, tail
from vmlab.ceph.info import CLIENT_ID, ClusterInfo, ImageRef
from vmlab.ceph.proc import INSTALL_HINT, ceph_cli, netns_prefix, rbd_cli, run_tool
from vmlab.ceph.rbd import RbdImages
from vmlab.errors import CommandError, HostError, LaunchError, VmlabError
from vmlab.proc import Deadline, ManagedProcess, alive, cmdline, pids_with_arg, run, stop_pid

__all__ = [
    "DEFAULT_OSD_SIZE_BYTES",
    "DEFAULT_POOL",
    "ClusterInfo",
    "ClusterReport",
    "ClusterSettings",
    "ClusterStatus",
    "DaemonStatus",
    "ImageRef",
    "MicroCluster",
    "PoolStatus",
    "parse_cluster_report",
    "render_ceph_conf",
]

log = logging.getLogger(__name__)

DEFAULT_POOL = "vmlab"
DEFAULT_OSD_SIZE_BYTES = 10 * 1024**3
MIN_OSD_SIZE_BYTES = 2 * 1024**3

MON_PORTS_DEFAULT = (3300, 6789)  # (msgr2, legacy msgr1), as in any Ceph cluster
_MON_PORT_SEARCH = range(3301, 3400)  # fallback: (p, p + 100) when the defaults are taken
_POLL_S = 0.1
_SUN_PATH_MAX = 107
_DAEMON_ENV = {"MALLOC_ARENA_MAX": "2"}  # else the OSD grows to 0.5-0.8 GB on glibc arenas
# Characters that ceph.conf or its $metavariables would misread in a path.
_CONF_UNSAFE = re.compile(r"[#;,$\n\r\[\]\\]")


@dataclass(frozen=True)
class _Daemon:
    kind: str  # mon | mgr | osd
    ident: str

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.ident}"

    @property
    def binary(self) -> str:
        return f"ceph-{self.kind}"


MON = _Daemon("mon", "a")
MGR = _Daemon("mgr", "x")
OSD = _Daemon("osd", "0")
DAEMONS = (MON, MGR, OSD)  # start order; stop in reverse


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True)
class ClusterSettings:
    """What a cluster was created with; saved as cluster.json and reused on every ``up``."""

    fsid: str
    bind_addr: str
    mon_v2_port: int
    mon_v1_port: int
    osd_size_bytes: int
    osd_uuid: str
    pool: str = DEFAULT_POOL
    netns: str | None = None
    complete: bool = False

    @property
    def mon_host(self) -> str:
        """Ceph's ``mon host`` value: both messenger addresses of the one monitor."""
        return f"[v2:{self.bind_addr}:{self.mon_v2_port},v1:{self.bind_addr}:{self.mon_v1_port}]"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterSettings:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class DaemonStatus:
    name: str  # mon.a, mgr.x, osd.0
    pid: int | None
    alive: bool  # process running (not a zombie) and its admin socket answers
    asok: Path
    rss_kib: int | None = None
    state: str = ""  # mon: leader/probing...; osd: booting/active...; "" if unknown


@dataclass(frozen=True)
class PoolStatus:
    name: str
    pool_id: int
    size: int
    min_size: int
    pg_num: int
    applications: tuple[str, ...]
    stored_bytes: int
    objects: int
    max_avail_bytes: int


@dataclass(frozen=True)
class ClusterReport:
    """What the monitor and manager say: parsed from ``ceph status/df/osd pool ls detail``."""

    fsid: str
    health: str  # HEALTH_OK | HEALTH_WARN | HEALTH_ERR
    health_checks: tuple[str, ...]  # "CODE: summary"
    num_osds: int
    num_up_osds: int
    num_in_osds: int
    pg_states: tuple[tuple[str, int], ...]
    used_bytes: int
    avail_bytes: int
    total_bytes: int
    mgr_available: bool
    pools: tuple[PoolStatus, ...]


@dataclass(frozen=True)
class ClusterStatus:
    state_dir: Path
    conf_path: Path
    exists: bool
    daemons: tuple[DaemonStatus, ...]
    report: ClusterReport | None = None
    images: tuple[ImageRef, ...] = ()
    problem: str | None = None  # why ``report`` is missing, when a daemon runs

    @property
    def running(self) -> bool:
        return all(d.alive for d in self.daemons)

    @property
    def health(self) -> str:
        return self.report.health if self.report is not None else "UNKNOWN"

    @property
    def pools(self) -> tuple[PoolStatus, ...]:
        return self.report.pools if self.report is not None else ()


# --------------------------------------------------------------------------- pure helpers


def render_ceph_conf(settings: ClusterSettings, state_dir: Path, run_dir: Path) -> str:
    """The cluster's ceph.conf: daemons and clients (QEMU, rbd, ceph) all read this one file."""
    s, r = state_dir, run_dir
    per_daemon = (
        f"admin socket = {r}/$cluster-$name.asok\n"
        f"pid file = {r}/$cluster-$name.pid\n"
        f"log file = {s}/log/$cluster-$name.log\n"
    )
    return (
        "# Written by vmlab (vmlab.ceph.cluster); regenerated on every `up`.\n"
        "[global]\n"
        f"fsid = {settings.fsid}\n"
        f"mon host = {settings.mon_host}\n"
        f"mon initial members = {MON.ident}\n"
        f"public addr = {settings.bind_addr}\n"
        f"cluster addr = {settings.bind_addr}\n"
        "ms bind ipv4 = true\n"
        "ms bind ipv6 = false\n"
        "auth cluster required = cephx\n"
        "auth service required = cephx\n"
        "auth client required = cephx\n"
        "auth allow insecure global id reclaim = false\n"
        f"run dir = {r}\n"
        f"crash dir = {s}/crash\n"
        "osd pool default size = 1\n"
        "osd pool default min size = 1\n"
        "osd pool default pg num = 8\n"
        "osd pool default pgp num = 8\n"
        "osd pool default pg autoscale mode = off\n"
        "osd crush chooseleaf type = 0\n"
        "mon allow pool size one = true\n"
        "mon allow pool delete = true\n"
        "mon warn on pool no redundancy = false\n"
        "mon data avail warn = 2\n"
        "mon data avail crit = 1\n"
        "paxos propose interval = 0.05\n"
        "mgr initial modules = iostat\n"
        "\n[mon]\n"
        f"mon data = {s}/mon/$cluster-$id\n"
        "keyring = $mon_data/keyring\n"
        f"mon cluster log file = {s}/log/$cluster.log\n"
        f"{per_daemon}"
        "\n[mgr]\n"
        f"mgr data = {s}/mgr/$cluster-$id\n"
        "keyring = $mgr_data/keyring\n"
        f"{per_daemon}"
        "\n[osd]\n"
        f"osd data = {s}/osd/$cluster-$id\n"
        "keyring = $osd_data/keyring\n"
        "osd objectstore = bluestore\n"
        "# bluestore block path stays unset: BlueStore opens the file `block` in osd data.\n"
        f"bluestore block size = {settings.osd_size_bytes}\n"
        "# 896 MiB is the lowest osd_memory_target Ceph accepts; the cache is what we shrink.\n"
        "osd memory target = 939524096\n"
        "bluestore cache autotune = false\n"
        "bluestore cache size = 67108864\n"
        "# Closing a block device waits out one aio poll (250 ms by default); BlueStore closes\n"
        "# and reopens its device ~7 times in mkfs and again at start. Idle cost: 20 wakeups/s.\n"
        "bdev aio poll ms = 50\n"
        f"{per_daemon}"
        "\n[client]\n"
        f"keyring = {s}/ceph.client.admin.keyring\n"
    )


def _health_checks(health: Mapping[str, Any]) -> tuple[str, ...]:
    checks = health.get("checks") or {}
    out = []
    for code, check in sorted(checks.items()):
        summary = (check.get("summary") or {}).get("message", "")
        out.append(f"{code}: {summary}" if summary else str(code))
    return tuple(out)


def parse_cluster_report(status_json: str, df_json: str, pools_json: str) -> ClusterReport:
    """Parse ``ceph status``, ``ceph df`` and ``ceph osd pool ls detail`` (all ``-f json``)."""
    try:
        st = json.loads(status_json)
        df = json.loads(df_json)
        detail = json.loads(pools_json)
        health = st.get("health") or {}
        pgmap = st.get("pgmap") or {}
        osdmap = st.get("osdmap") or {}
        osdmap = osdmap.get("osdmap", osdmap)  # nested one level deeper before Pacific
        usage = {p["name"]: p.get("stats") or {} for p in df.get("pools", [])}
        pools = []
        for p in detail:
            stats = usage.get(p["pool_name"], {})
            pools.append(
                PoolStatus(
                    name=p["pool_name"],
                    pool_id=int(p["pool_id"]),
                    size=int(p["size"]),
                    min_size=int(p["min_size"]),
                    pg_num=int(p["pg_num"]),
                    applications=tuple(sorted(p.get("application_metadata") or {})),
                    stored_bytes=int(stats.get("stored", 0)),
                    objects=int(stats.get("objects", 0)),
                    max_avail_bytes=int(stats.get("max_avail", 0)),
                )
            )
        totals = df.get("stats") or {}
        return ClusterReport(
            fsid=str(st.get("fsid", "")),
            health=str(health.get("status", "UNKNOWN")),
            health_checks=_health_checks(health),
            num_osds=int(osdmap.get("num_osds", 0)),
            num_up_osds=int(osdmap.get("num_up_osds", 0)),
            num_in_osds=int(osdmap.get("num_in_osds", 0)),
            pg_states=tuple(
                (str(s["state_name"]), int(s["count"])) for s in pgmap.get("pgs_by_state", [])
            ),
            used_bytes=int(totals.get("total_used_raw_bytes", pgmap.get("bytes_used", 0))),
            avail_bytes=int(totals.get("total_avail_bytes", pgmap.get("bytes_avail", 0))),
            total_bytes=int(totals.get("total_bytes", pgmap.get("bytes_total", 0))),
            mgr_available=bool((st.get("mgrmap") or {}).get("available", False)),
            pools=tuple(pools),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VmlabError(
            f"unexpected output from the ceph CLI: {exc!r}",
            hint="is this Ceph Pacific (16.2, Debian 12)? other releases may differ",
        ) from exc


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    state_dir: Path
    run_dir: Path

    @classmethod
    def of(cls, state_dir: Path) -> _Layout:
        state_dir = state_dir.absolute()
        run_dir = state_dir / "run"
        if len(str(run_dir / "ceph-mon.a.asok")) > _SUN_PATH_MAX:
            # Unix socket paths are limited to 107 bytes: keep sockets in the runtime dir.
            digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
            run_dir = paths.runtime_dir() / f"ceph-{digest}"
        return cls(state_dir, run_dir)

    @property
    def conf(self) -> Path:
        return self.state_dir / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.state_dir / "ceph.client.admin.keyring"

    @property
    def settings(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def images(self) -> Path:
        return self.state_dir / "images.json"

    @property
    def lock(self) -> Path:
        return self.state_dir / ".lock"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def monmap(self) -> Path:
        return self.state_dir / "monmap"

    @property
    def mkfs_keyring(self) -> Path:
        return self.state_dir / "mkfs.keyring"

    def data_dir(self, d: _Daemon) -> Path:
        return self.state_dir / d.kind / f"ceph-{d.ident}"

    @property
    def osd_block(self) -> Path:
        return self.data_dir(OSD) / "block"

    def pidfile(self, d: _Daemon) -> Path:
        return self.run_dir / f"ceph-{d.name}.pid"

    def asok(self, d: _Daemon) -> Path:
        return self.run_dir / f"ceph-{d.name}.asok"

    def log(self, d: _Daemon) -> Path:
        return self.log_dir / f"ceph-{d.name}.log"

    def stdio_log(self, d: _Daemon) -> Path:
        return self.log_dir / f"ceph-{d.name}.stdio.log"


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.chmod(mode)
    tmp.replace(path)


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


# --------------------------------------------------------------------------- the cluster


class MicroCluster:
    """One mon, one mgr and one BlueStore OSD (on a sparse file) in ``state_dir``.

    ``bind_addr`` and ``netns`` matter when the cluster is created; an existing cluster keeps
    the ones it was made with (from cluster.json): passing a different non-default value is an
    error. ``netns`` names a namespace made by someone else (``ip netns add``); the daemons and
    every client command run under ``ip netns exec``; QEMU using the cluster must run there too.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        bind_addr: str = "127.0.0.1",
        netns: str | None = None,
        osd_size_bytes: int = DEFAULT_OSD_SIZE_BYTES,
        pool: str = DEFAULT_POOL,
    ) -> None:
        try:
            ip = ipaddress.ip_address(bind_addr)
        except ValueError as exc:
            raise VmlabError(f"bad bind address {bind_addr!r}: {exc}") from exc
        if ip.version != 4:
            raise VmlabError(
                f"bind address {bind_addr} is IPv6; the micro cluster binds IPv4 only",
                hint="use 127.0.0.1 or an IPv4 address inside --netns",
            )
        if osd_size_bytes < MIN_OSD_SIZE_BYTES:
            raise VmlabError(
                f"OSD size {osd_size_bytes} B is below the {MIN_OSD_SIZE_BYTES >> 30} GiB minimum",
                hint="the file is sparse: 10 GiB costs only what is written",
            )
        self._layout = _Layout.of(state_dir)
        if _CONF_UNSAFE.search(str(self._layout.state_dir)) or _CONF_UNSAFE.search(
            str(self._layout.run_dir)
        ):
            raise VmlabError(
                f"state dir {self._layout.state_dir} has a character ceph.conf cannot hold",
                hint="choose a path without , # ; $ [ ] or backslash",
            )
        self._bind_addr = bind_addr
        self._netns = netns
        self._osd_size_bytes = osd_size_bytes
        self._pool = pool

    # ---- public API

    @property
    def state_dir(self) -> Path:
        return self._layout.state_dir

    def __enter__(self) -> ClusterInfo:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self, timeout_s: float = 120.0) -> ClusterInfo:
        """Create the cluster, or start whichever of its daemons are not running.

        A no-op (a few admin-socket calls) when everything runs. Returns once the pool answers
        I/O. On failure the daemons this call started are stopped again (logs stay).
        """
        deadline = Deadline(timeout_s, "ceph up")
        with self._locked():
            settings = self._load_settings()
            if settings is None or not settings.complete:
                if settings is not None:
                    log.warning("an earlier `up` did not finish in %s: recreating", self.state_dir)
                    self._stop_all(Deadline(30.0, "stop leftovers"))
                    self._wipe_cluster_files()
                settings = self._create(deadline)
            else:
                settings = self._reconcile(settings)
                self._start_existing(settings, deadline)
            return self._info(settings)

    def down(self, timeout_s: float = 60.0) -> None:
        """Stop the daemons (OSD, mgr, mon: SIGTERM, then SIGKILL); the data stays."""
        if not self.state_dir.exists():
            return
        with self._locked():
            self._stop_all(Deadline(timeout_s, "ceph down"))

    def purge(self, timeout_s: float = 60.0) -> None:
        """Stop everything and delete the state directory (and run dir) entirely."""
        layout = self._layout
        if layout.state_dir.exists():
            ours = layout.settings.exists() or layout.conf.exists()
            if not ours and any(p.name != ".lock" for p in layout.state_dir.iterdir()):
                raise VmlabError(
                    f"{layout.state_dir} is not a vmlab Ceph state dir (no cluster.json): "
                    "refusing to delete it",
                    hint="check --state-dir; remove the directory by hand if it is yours",
                )
            with self._locked():
                try:
                    self._stop_all(Deadline(timeout_s, "ceph purge"))
                finally:
                    self._kill_stragglers()
                    shutil.rmtree(layout.state_dir, ignore_errors=True)
        if layout.run_dir.exists():
            shutil.rmtree(layout.run_dir, ignore_errors=True)
        if layout.state_dir.exists():
            raise HostError(
                f"could not remove {layout.state_dir}",
                hint="something still holds files there: `fuser -vm` it, then remove by hand",
            )
        log.info("purged micro Ceph cluster in %s", layout.state_dir)

    def info(self) -> ClusterInfo:
        """Connection info of an existing cluster (running or not)."""
        settings = self._load_settings()
        if settings is None or not settings.complete:
            raise VmlabError(
                f"no micro Ceph cluster in {self.state_dir}",
                hint=f"create it: vmlab ceph up --state-dir {self.state_dir}",
            )
        return self._info(settings)

    def status(self, timeout_s: float = 30.0) -> ClusterStatus:
        layout = self._layout
        settings = self._load_settings()
        exists = settings is not None and settings.complete
        daemons = tuple(self._daemon_status(d) for d in DAEMONS)
        if not exists or settings is None or not daemons[0].alive:
            return ClusterStatus(layout.state_dir, layout.conf, exists, daemons)
        info = self._info(settings)
        try:
            report = self._report(info, timeout_s, mgr_alive=daemons[1].alive)
            images: tuple[ImageRef, ...] = ()
            if daemons[2].alive:
                images = self._images(info, report, timeout_s)
        except VmlabError as exc:
            return ClusterStatus(layout.state_dir, layout.conf, True, daemons, problem=str(exc))
        return ClusterStatus(layout.state_dir, layout.conf, True, daemons, report, images)

    def ensure_pool(self, name: str, pg_num: int = 8) -> None:
        """Create a size-1 replicated pool with the rbd application, unless it exists."""
        self._ensure_pool(self._running_info(), name, pg_num)

    def ensure_image(self, pool: str, name: str, size_bytes: int) -> ImageRef:
        return RbdImages(self._running_info()).ensure(pool, name, size_bytes)

    # ---- creation

    def _create(self, deadline: Deadline) -> ClusterSettings:
        layout = self._layout
        for binary in ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "ceph-authtool", "monmaptool"):
            if shutil.which(binary) is None:
                raise HostError(f"{binary} is not installed", hint=INSTALL_HINT)
        self._check_netns()
        ports = MON_PORTS_DEFAULT if self._netns else pick_mon_ports(self._bind_addr)
        settings = ClusterSettings(
            fsid=str(uuid.uuid4()),
            bind_addr=self._bind_addr,
            mon_v2_port=ports[0],
            mon_v1_port=ports[1],
            osd_size_bytes=self._osd_size_bytes,
            osd_uuid=str(uuid.uuid4()),
            pool=self._pool,
            netns=self._netns,
        )
        log.info("creating micro Ceph cluster %s in %s", settings.fsid, layout.state_dir)
        _write_private(layout.settings, settings.to_json())
        for d in DAEMONS:
            layout.data_dir(d).mkdir(parents=True, exist_ok=True)
        for sub in (layout.run_dir, layout.log_dir, layout.state_dir / "crash"):
            sub.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_conf(settings)
        self._make_keyrings()
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
        try:
            # BlueStore mkfs takes seconds of mostly waiting: overlap it with mon and mgr start.
            with self._osd_mkfs(settings) as mkfs:
                for d in (MON, MGR):
                    self._start_daemon(d, settings, deadline)
                self._wait_mon(deadline)
                info = self._info(settings)
                ceph_cli(info, ["osd", "new", settings.osd_uuid, OSD.ident], what="osd new")
                self._ensure_pool(info, settings.pool, 8)
                _wait_mkfs(mkfs, deadline)
            self._start_daemon(OSD, settings, deadline)
            self._wait_osd_active(deadline)
            self._probe_io(info, deadline)
        except BaseException:
            # Everything here is ours and half-made: stop it all; the next `up` starts afresh.
            self._stop_all(Deadline(30.0, "stop after a failed up"))
            raise
        layout.mkfs_keyring.unlink(missing_ok=True)
        layout.monmap.unlink(missing_ok=True)
        settings = ClusterSettings(**{**asdict(settings), "complete": True})
        _write_private(layout.settings, settings.to_json())
        return settings

    def _make_keyrings(self) -> None:
        layout = self._layout
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

    def _osd_mkfs(self, settings: ClusterSettings) -> ManagedProcess:
        """``ceph-osd --mkfs`` as a child that runs while the mon and mgr start (killed on
        leaving the ``with`` block if it has not finished)."""
        layout = self._layout
        argv = [
            "ceph-osd", "--cluster", "ceph", "-c", str(layout.conf), "--no-mon-config",
            "--mkfs", "-i", OSD.ident, "--osd-uuid", settings.osd_uuid,
            "--monmap", str(layout.monmap), "--osd-objectstore", "bluestore",
        ]  # fmt: skip
        return ManagedProcess(
            argv,
            log_path=layout.log_dir / "ceph-osd.0.mkfs.log",
            what="ceph-osd --mkfs",
            env={**os.environ, **_DAEMON_ENV},
            stop_signal=signal.SIGKILL,
            grace_s=10.0,
            missing_hint=INSTALL_HINT,
        )

    # ---- starting and stopping

    def _start_existing(self, settings: ClusterSettings, deadline: Deadline) -> None:
        self._check_netns()
        self._write_conf(settings)  # paths may have moved (run dir); content is deterministic
        self._layout.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._layout.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        started: list[_Daemon] = []
        try:
            for d in DAEMONS:
                if self._live_pid(d) is None:
                    started.append(d)
                    self._start_daemon(d, settings, deadline)
                elif not self._asok_answers(d):
                    log.info("%s runs but its admin socket is silent; waiting for it", d.name)
            self._wait_mon(deadline)
            self._wait_osd_active(deadline)
            if started:
                self._probe_io(self._info(settings), deadline)
        except BaseException:
            self._stop_all(Deadline(30.0, "stop after a failed up"), only=started)
            raise
        if started:
            log.info("started %s", ", ".join(d.name for d in started))

    def _start_daemon(self, d: _Daemon, settings: ClusterSettings, deadline: Deadline) -> None:
        layout = self._layout
        layout.pidfile(d).unlink(missing_ok=True)  # a dead daemon's pidfile
        argv = [
            *netns_prefix(settings.netns),
            d.binary, "--cluster", "ceph", "-c", str(layout.conf), "-i", d.ident,
        ]  # fmt: skip
        log.debug("starting %s: %s", d.name, argv)
        # The daemon forks; its parent exits once the child is initialized (the OSD: ~1.5 s).
        # Output goes to a file, never a pipe: the daemon may keep the descriptor open.
        try:
            done = run(
                argv, timeout_s=max(1.0, deadline.remaining_s()), what=d.binary, check=False,
                env={**os.environ, **_DAEMON_ENV}, output=layout.stdio_log(d),
                missing_hint=INSTALL_HINT,
            )  # fmt: skip
        except CommandError as exc:  # with check=False: only when it outlives the deadline
            raise self._daemon_error(d, argv, None, "did not daemonize in time") from exc
        if not done.ok:
            raise self._daemon_error(d, argv, done.returncode, "did not start")

    def _daemon_error(
        self, d: _Daemon, argv: Sequence[str], rc: int | None, what: str
    ) -> CommandError:
        layout = self._layout
        output = "\n".join(t for t in (tail(layout.stdio_log(d)), tail(layout.log(d))) if t)
        return CommandError(
            f"{d.binary} {d.ident} {what}",
            argv=argv,
            returncode=rc,
            output=output,
            log=layout.log(d),
            hint="read the log; `vmlab ceph purge` and `up` again if the data is expendable",
        )

    def _stop_all(self, deadline: Deadline, only: Sequence[_Daemon] | None = None) -> None:
        for d in reversed(DAEMONS):
            if only is None or d in only:
                self._stop_daemon(d, deadline)
        if only is None:
            self._kill_stragglers()

    def _stop_daemon(self, d: _Daemon, deadline: Deadline) -> None:
        pid = self._live_pid(d)
        if pid is None:
            self._layout.pidfile(d).unlink(missing_ok=True)
            return
        log.info("stopping %s (pid %s)", d.name, pid)
        # The OSD tells the mon it is going down (up to 5 s when the mon is gone, so the OSD
        # stops first); then fast shutdown. Only a process naming our ceph.conf is signalled.
        grace_s = min(20.0, deadline.remaining_s())
        if not stop_pid(pid, grace_s=grace_s, what=d.name, arg=str(self._layout.conf)):
            raise HostError(
                f"{d.name} (pid {pid}) did not exit after SIGKILL",
                hint=f"it may be stuck in the kernel: see /proc/{pid}/stack",
            )

    def _kill_stragglers(self) -> None:
        """SIGKILL any live process naming our ceph.conf (lost pidfile, half-made cluster)."""
        marker = str(self._layout.conf)
        for pid in pids_with_arg(marker):
            if pid == os.getpid():
                continue
            log.warning("killing straggler pid %s (%s)", pid, " ".join(cmdline(pid))[:200])
            stop_pid(pid, first=signal.SIGKILL, grace_s=10.0, what="straggler", arg=marker)

    # ---- liveness and readiness

    def _live_pid(self, d: _Daemon) -> int | None:
        try:
            pid = int(self._layout.pidfile(d).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid, arg=str(self._layout.conf)) else None

    def _asok_answers(self, d: _Daemon) -> bool:
        return asok_json(self._layout.asok(d), {"prefix": "version"}) is not None

    def _daemon_status(self, d: _Daemon) -> DaemonStatus:
        asok = self._layout.asok(d)
        pid = self._live_pid(d)
        state = ""
        alive = False
        if pid is not None:
            if d.kind == "mon":
                answer = asok_json(asok, {"prefix": "mon_status"})
            elif d.kind == "osd":
                answer = asok_json(asok, {"prefix": "status"})
            else:
                answer = asok_json(asok, {"prefix": "version"})
            alive = answer is not None
            if answer is not None:
                state = str(answer.get("state", "running"))
        return DaemonStatus(
            name=d.name,
            pid=pid,
            alive=alive,
            asok=asok,
            rss_kib=rss_kib(pid) if pid is not None else None,
            state=state,
        )

    def _wait_for(
        self, d: _Daemon, command: Mapping[str, Any], states: Sequence[str], deadline: Deadline
    ) -> None:
        last = "no answer"
        while True:
            answer = asok_json(self._layout.asok(d), command)
            if answer is not None:
                last = str(answer.get("state"))
                if last in states:
                    return
            if self._live_pid(d) is None:
                raise self._daemon_error(d, [d.binary], None, "died while starting")
            if deadline.expired():
                raise LaunchError(
                    f"{d.name} not ready in {deadline.timeout_s:.0f} s (state: {last})",
                    log=self._layout.log(d),
                )
            time.sleep(_POLL_S)

    def _wait_mon(self, deadline: Deadline) -> None:
        self._wait_for(MON, {"prefix": "mon_status"}, ("leader",), deadline)

    def _wait_osd_active(self, deadline: Deadline) -> None:
        # "active" means the OSD saw itself up in the osdmap: clients asking now get a map with
        # its new address (asking earlier after a restart stalls them ~15 s on the old one).
        self._wait_for(OSD, {"prefix": "status"}, ("active",), deadline)

    def _probe_io(self, info: ClusterInfo, deadline: Deadline) -> None:
        """One RADOS read in the pool, retried until its PGs are active."""
        while True:
            try:
                rbd_cli(
                    info,
                    ["ls", "--pool", info.pool, "--rados-osd-op-timeout=5"],
                    what="rbd ls (I/O probe)",
                    timeout_s=min(15.0, max(1.0, deadline.remaining_s())),
                )
                return
            except CommandError:
                if deadline.expired():
                    raise
                time.sleep(0.5)

    # ---- cluster commands

    def _ensure_pool(self, info: ClusterInfo, name: str, pg_num: int) -> None:
        # Both commands are idempotent: "already exists" / "already enabled" exit 0.
        ceph_cli(
            info,
            ["osd", "pool", "create", name, str(pg_num), str(pg_num), "replicated", "--size", "1"],
            what="osd pool create",
        )
        ceph_cli(info, ["osd", "pool", "application", "enable", name, "rbd"], what="app enable")

    def _report(self, info: ClusterInfo, timeout_s: float, *, mgr_alive: bool) -> ClusterReport:
        # `ceph df` is served by the mgr and would wait for one: skip it when the mgr is down.
        df = "{}"
        if mgr_alive:
            df = ceph_cli(info, ["df", "-f", "json"], what="df", timeout_s=timeout_s)
        return parse_cluster_report(
            ceph_cli(info, ["status", "-f", "json"], what="status", timeout_s=timeout_s),
            df,
            ceph_cli(
                info,
                ["osd", "pool", "ls", "detail", "-f", "json"],
                what="pools",
                timeout_s=timeout_s,
            ),
        )

    def _images(
        self, info: ClusterInfo, report: ClusterReport, timeout_s: float
    ) -> tuple[ImageRef, ...]:
        images: list[ImageRef] = []
        for pool in report.pools:
            if "rbd" not in pool.applications:
                continue
            out = rbd_cli(
                info,
                ["ls", "--long", "--format", "json", "--pool", pool.name,
                 "--rados-osd-op-timeout=10"],
                what=f"rbd ls {pool.name}", timeout_s=timeout_s,
            )  # fmt: skip
            for entry in json.loads(out or "[]"):
                if "snapshot" in entry:
                    continue
                parent = entry.get("parent")
                parent_spec = None
                if isinstance(parent, dict):
                    parent_spec = (
                        f"{parent.get('pool')}/{parent.get('image')}@{parent.get('snapshot')}"
                    )
                images.append(
                    ImageRef(pool.name, str(entry["image"]), int(entry["size"]), parent_spec)
                )
        return tuple(images)

    # ---- settings, conf, locking

    def _info(self, settings: ClusterSettings) -> ClusterInfo:
        layout = self._layout
        return ClusterInfo(
            conf_path=layout.conf,
            keyring_path=layout.admin_keyring,
            fsid=settings.fsid,
            mon_addr=settings.mon_host,
            pool=settings.pool,
            state_dir=layout.state_dir,
            netns=settings.netns,
        )

    def _running_info(self) -> ClusterInfo:
        info = self.info()
        if self._live_pid(MON) is None:
            raise LaunchError(
                f"the micro Ceph cluster in {self.state_dir} is not running",
                hint=f"start it: vmlab ceph up --state-dir {self.state_dir}",
            )
        return info

    def _load_settings(self) -> ClusterSettings | None:
        try:
            return ClusterSettings.from_json(self._layout.settings.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise VmlabError(
                f"{self._layout.settings} is damaged: {exc}",
                hint="`vmlab ceph purge` and `up` again",
            ) from exc

    def _reconcile(self, settings: ClusterSettings) -> ClusterSettings:
        if self._bind_addr not in ("127.0.0.1", settings.bind_addr):
            raise VmlabError(
                f"the cluster in {self.state_dir} is bound to {settings.bind_addr}, "
                f"not {self._bind_addr}",
                hint="drop --bind, or purge the cluster to recreate it elsewhere",
            )
        if self._netns is not None and self._netns != settings.netns:
            raise VmlabError(
                f"the cluster in {self.state_dir} lives in netns {settings.netns!r}, "
                f"not {self._netns!r}",
                hint="drop --netns, or purge the cluster to recreate it elsewhere",
            )
        if self._osd_size_bytes not in (DEFAULT_OSD_SIZE_BYTES, settings.osd_size_bytes):
            log.warning(
                "the OSD exists with %s bytes; ignoring the requested size", settings.osd_size_bytes
            )
        return settings

    def _check_netns(self) -> None:
        netns = self._netns
        if netns is None:
            settings = self._load_settings()
            netns = settings.netns if settings is not None else None
        if netns is not None and not (Path("/run/netns") / netns).exists():
            raise HostError(
                f"network namespace {netns!r} does not exist",
                hint=f"create it first (ip netns add {netns}) with {self._bind_addr} inside",
            )

    def _write_conf(self, settings: ClusterSettings) -> None:
        text = render_ceph_conf(settings, self._layout.state_dir, self._layout.run_dir)
        _write_private(self._layout.conf, text, mode=0o644)

    def _wipe_cluster_files(self) -> None:
        layout = self._layout
        for sub in ("mon", "mgr", "osd", "log", "crash"):
            shutil.rmtree(layout.state_dir / sub, ignore_errors=True)
        shutil.rmtree(layout.run_dir, ignore_errors=True)
        for f in (layout.conf, layout.admin_keyring, layout.settings, layout.images,
                  layout.images.with_name("images.json.lock"), layout.monmap,
                  layout.mkfs_keyring):  # fmt: skip
            f.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up``/``down``/``purge`` at a time per state dir (flock on state_dir/.lock)."""
        self._layout.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _wait_mkfs(mkfs: ManagedProcess, deadline: Deadline) -> None:
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
