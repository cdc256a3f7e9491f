"""A real single-node micro Ceph cluster for labs and tests: one mon, one mgr, one BlueStore OSD.

Built from Debian 12's packages (``ceph-mon ceph-osd ceph-mgr ceph-common``) without systemd or
containers. :class:`MicroCluster` is the one object callers use; each step has its own module:

    conf.py       settings (cluster.json), ceph.conf, the state-dir layout, the daemons' names
    bootstrap.py  creating a new cluster: keyrings, monmap, mon and OSD mkfs, pools
    daemons.py    starting, stopping and watching the daemons (pidfiles, admin sockets)
    status.py     what the cluster reports (``ceph status``/``df``, pools, images)
    proc.py       running Ceph's command-line tools (in the cluster's network namespace)
    rbd.py        RBD images and krbd
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from vmlab.ceph import bootstrap
from vmlab.ceph.conf import (
    DAEMONS,
    DEFAULT_OSD_SIZE_BYTES,
    DEFAULT_POOL,
    MIN_OSD_SIZE_BYTES,
    MON,
    ClusterSettings,
    Daemon,
    Layout,
    client_info,
    load_settings,
    render_ceph_conf,
    write_conf,
)
from vmlab.ceph.daemons import Daemons, DaemonStatus, wait_for_io
from vmlab.ceph.info import ClusterInfo, ImageRef
from vmlab.ceph.proc import check_netns
from vmlab.ceph.rbd import RbdImages
from vmlab.ceph.status import (
    ClusterReport,
    ClusterStatus,
    PoolStatus,
    list_images,
    parse_cluster_report,
    read_report,
)
from vmlab.errors import HostError, LaunchError, VmlabError
from vmlab.proc import Deadline

__all__ = [  # the records callers use, wherever they live
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
        self._layout = Layout.of(state_dir)
        self._daemons = Daemons(self._layout)
        self._bind_addr = bind_addr
        self._netns = netns
        self._osd_size_bytes = osd_size_bytes
        self._pool = pool

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
            settings = load_settings(self._layout)
            if settings is None or not settings.complete:
                if settings is not None:
                    log.warning("an earlier `up` did not finish in %s: recreating", self.state_dir)
                    self._daemons.stop_all(Deadline(30.0, "stop leftovers"))
                    bootstrap.wipe_cluster_files(self._layout)
                settings = bootstrap.create_cluster(
                    self._layout,
                    bind_addr=self._bind_addr,
                    netns=self._netns,
                    osd_size_bytes=self._osd_size_bytes,
                    pool=self._pool,
                    deadline=deadline,
                )
            else:
                settings = self._reconcile(settings)
                self._start_existing(settings, deadline)
            return client_info(self._layout, settings)

    def down(self, timeout_s: float = 60.0) -> None:
        """Stop the daemons (OSD, mgr, mon: SIGTERM, then SIGKILL); the data stays."""
        if not self.state_dir.exists():
            return
        with self._locked():
            self._daemons.stop_all(Deadline(timeout_s, "ceph down"))

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
                    self._daemons.stop_all(Deadline(timeout_s, "ceph purge"))
                finally:
                    self._daemons.kill_stragglers()
                    shutil.rmtree(layout.state_dir, ignore_errors=True)
        if layout.run_dir.exists():
            shutil.rmtree(layout.run_dir, ignore_errors=True)
        if layout.state_dir.exists():
            raise HostError(
                f"could not remove {layout.state_dir}",
                hint="something still holds files there: `fuser -vm` it, then remove by hand",
            )
        log.info("purged micro Ceph cluster in %s", layout.state_dir)

    def expected_info(self) -> ClusterInfo:
        """Where the cluster's conf and admin keyring are (or will be), without reading them:
        for previews of what a run would pass to its clients."""
        layout = self._layout
        return ClusterInfo(
            conf_path=layout.conf,
            keyring_path=layout.admin_keyring,
            fsid="",
            mon_addr="",
            pool="",
            state_dir=layout.state_dir,
        )

    def info(self) -> ClusterInfo:
        """Connection info of an existing cluster (running or not)."""
        settings = load_settings(self._layout)
        if settings is None or not settings.complete:
            raise VmlabError(
                f"no micro Ceph cluster in {self.state_dir}",
                hint=f"create it: vmlab ceph up --state-dir {self.state_dir}",
            )
        return client_info(self._layout, settings)

    def status(self, timeout_s: float = 30.0) -> ClusterStatus:
        layout = self._layout
        settings = load_settings(layout)
        exists = settings is not None and settings.complete
        daemons = tuple(self._daemons.status(d) for d in DAEMONS)
        if not exists or settings is None or not daemons[0].alive:
            return ClusterStatus(layout.state_dir, layout.conf, exists, daemons)
        info = client_info(layout, settings)
        try:
            report = read_report(info, timeout_s, mgr_alive=daemons[1].alive)
            images: tuple[ImageRef, ...] = ()
            if daemons[2].alive:
                images = list_images(info, report, timeout_s)
        except VmlabError as exc:
            return ClusterStatus(layout.state_dir, layout.conf, True, daemons, problem=str(exc))
        return ClusterStatus(layout.state_dir, layout.conf, True, daemons, report, images)

    def ensure_pool(self, name: str, pg_num: int = 8) -> None:
        """Create a size-1 replicated pool with the rbd application, unless it exists."""
        bootstrap.ensure_pool(self._running_info(), name, pg_num)

    def ensure_image(self, pool: str, name: str, size_bytes: int) -> ImageRef:
        return RbdImages(self._running_info()).ensure(pool, name, size_bytes)

    # ---- helpers

    def _start_existing(self, settings: ClusterSettings, deadline: Deadline) -> None:
        check_netns(settings.netns, self._bind_addr)
        # Paths may have moved (the run dir); the content is deterministic.
        write_conf(self._layout, settings)
        self._layout.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._layout.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        daemons = self._daemons
        started: list[Daemon] = []
        try:
            for d in DAEMONS:
                if daemons.live_pid(d) is None:
                    started.append(d)
                    daemons.start(d, settings.netns, deadline)
                elif not daemons.asok_answers(d):
                    log.info("%s runs but its admin socket is silent; waiting for it", d.name)
            daemons.wait_mon(deadline)
            daemons.wait_osd_active(deadline)
            if started:
                wait_for_io(client_info(self._layout, settings), deadline)
        except BaseException:
            daemons.stop_all(Deadline(30.0, "stop after a failed up"), only=started)
            raise
        if started:
            log.info("started %s", ", ".join(d.name for d in started))

    def _running_info(self) -> ClusterInfo:
        info = self.info()
        if self._daemons.live_pid(MON) is None:
            raise LaunchError(
                f"the micro Ceph cluster in {self.state_dir} is not running",
                hint=f"start it: vmlab ceph up --state-dir {self.state_dir}",
            )
        return info

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
