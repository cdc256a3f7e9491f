"""What a micro cluster is and where it lives: its settings, its ceph.conf, its files.

Everything lives in one state directory::

    state_dir/
      ceph.conf                  rendered by render_ceph_conf(), the only file clients need
      ceph.client.admin.keyring  mode 0600
      cluster.json               ClusterSettings (fsid, ports, bind address, netns, ...)
      images.json                images vmlab created (see vmlab.ceph.rbd)
      mon/ceph-a  mgr/ceph-x  osd/ceph-0 (block: a sparse file)
      run/                       pidfiles and admin sockets (elsewhere if the path is too long)
      log/                       daemon logs, and each daemon's stdout/stderr

:class:`Layout` names every one of these paths; :data:`DAEMONS` names the three daemons.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vmlab import paths
from vmlab.ceph.info import ClusterInfo
from vmlab.errors import VmlabError

DEFAULT_POOL = "vmlab"
DEFAULT_OSD_SIZE_BYTES = 10 * 1024**3
MIN_OSD_SIZE_BYTES = 2 * 1024**3

_SUN_PATH_MAX = 107
# Characters that ceph.conf or its $metavariables would misread in a path.
_CONF_UNSAFE = re.compile(r"[#;,$\n\r\[\]\\]")


@dataclass(frozen=True)
class Daemon:
    """One of the cluster's daemons: ``mon.a``, run by ``ceph-mon -i a``."""

    kind: str  # mon | mgr | osd
    ident: str

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.ident}"

    @property
    def binary(self) -> str:
        return f"ceph-{self.kind}"


MON = Daemon("mon", "a")
MGR = Daemon("mgr", "x")
OSD = Daemon("osd", "0")
DAEMONS = (MON, MGR, OSD)  # start order; stop in reverse


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
        # Percent free on the mon's disk (defaults 30, 5): a lab's fuller disk must neither
        # turn the health to WARN nor stop the mon.
        "mon data avail warn = 2\n"
        "mon data avail crit = 1\n"
        # Every map change waits this long (default 1 s): creating a pool took ~6 s.
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


@dataclass(frozen=True)
class Layout:
    """Where each file of the cluster in ``state_dir`` lives."""

    state_dir: Path
    run_dir: Path

    @classmethod
    def of(cls, state_dir: Path) -> Layout:
        """The layout of ``state_dir``; VmlabError if ceph.conf could not name its paths."""
        state_dir = state_dir.absolute()
        run_dir = state_dir / "run"
        if len(str(run_dir / "ceph-mon.a.asok")) > _SUN_PATH_MAX:
            # Unix socket paths are limited to 107 bytes: keep sockets in the runtime dir.
            digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
            run_dir = paths.runtime_dir() / f"ceph-{digest}"
        if _CONF_UNSAFE.search(str(state_dir)) or _CONF_UNSAFE.search(str(run_dir)):
            raise VmlabError(
                f"state dir {state_dir} has a character ceph.conf cannot hold",
                hint="choose a path without , # ; $ [ ] or backslash",
            )
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

    def data_dir(self, d: Daemon) -> Path:
        return self.state_dir / d.kind / f"ceph-{d.ident}"

    @property
    def osd_block(self) -> Path:
        return self.data_dir(OSD) / "block"

    def pidfile(self, d: Daemon) -> Path:
        return self.run_dir / f"ceph-{d.name}.pid"

    def asok(self, d: Daemon) -> Path:
        return self.run_dir / f"ceph-{d.name}.asok"

    def log(self, d: Daemon) -> Path:
        return self.log_dir / f"ceph-{d.name}.log"

    def stdio_log(self, d: Daemon) -> Path:
        return self.log_dir / f"ceph-{d.name}.stdio.log"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.chmod(mode)
    tmp.replace(path)


def write_conf(layout: Layout, settings: ClusterSettings) -> None:
    write_private(layout.conf, render_ceph_conf(settings, layout.state_dir, layout.run_dir), 0o644)


def load_settings(layout: Layout) -> ClusterSettings | None:
    """cluster.json, or None when there is none (no cluster was ever created here)."""
    try:
        return ClusterSettings.from_json(layout.settings.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise VmlabError(
            f"{layout.settings} is damaged: {exc}",
            hint="`vmlab ceph purge` and `up` again",
        ) from exc


def client_info(layout: Layout, settings: ClusterSettings) -> ClusterInfo:
    """How clients reach the cluster: its conf and the admin keyring."""
    return ClusterInfo(
        conf_path=layout.conf,
        keyring_path=layout.admin_keyring,
        fsid=settings.fsid,
        mon_addr=settings.mon_host,
        pool=settings.pool,
        state_dir=layout.state_dir,
        netns=settings.netns,
    )
