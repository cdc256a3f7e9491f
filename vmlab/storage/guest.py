"""The guest as the Ceph client (``served_by: guest``): nothing serves the disk on the host.

A micro Ceph cluster runs inside the case's lab network namespace, bound to the bridge address
the guest reaches over its lab NIC; fio in the guest talks to it with its rbd engine. After
the guest is up, ceph.conf and the keyring are pushed into it (the keyring goes nowhere else).

With ``backend.krbd`` the guest's own kernel maps the image instead: the default image carries
the rbd module (loaded on demand by ``vmlab-modules rbd``), the mapping is written to
``/sys/bus/rbd/add_single_major`` (the secret through stdin, never on a command line) and fio
runs with its ordinary engine on the guest's ``/dev/rbdN``. The guest is powered off before the
cluster stops, so the mapping goes with it.
"""

from __future__ import annotations

import base64
import re
import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.info import ClusterInfo, read_key
from vmlab.errors import GuestError, HostError
from vmlab.render.model import DiskSource
from vmlab.spec import Disk, FioJob, RbdBackend
from vmlab.storage.base import Preview, ServeContext

GUEST_CEPH_DIR = "/etc/ceph"


class CommandOutput(Protocol):
    @property
    def stdout(self) -> bytes: ...


class GuestShell(Protocol):
    """What pushing the client needs of a guest session (vmlab.guest.ssh.GuestSSH)."""

    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> CommandOutput: ...
    def put(self, data: bytes, remote: str, *, mode: int = 0o644) -> None: ...


@dataclass
class GuestCeph:
    """The case's in-guest cluster and the images its disks use."""

    cluster: MicroCluster
    info: ClusterInfo
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # disk -> (pool, image)
    krbd: dict[str, tuple[str, str]] = field(default_factory=dict)  # mapped in the guest

    def push_client(self, guest: GuestShell) -> None:
        """ceph.conf and the keyring into the guest."""
        conf = (
            f"[global]\nfsid = {self.info.fsid}\nmon host = {self.info.mon_addr}\n"
            f"[client]\nkeyring = {GUEST_CEPH_DIR}/keyring\n"
        )
        guest.run(f"mkdir -p {GUEST_CEPH_DIR}", timeout_s=30)
        guest.put(conf.encode(), f"{GUEST_CEPH_DIR}/ceph.conf")
        guest.put(self.info.keyring_path.read_bytes(), f"{GUEST_CEPH_DIR}/keyring", mode=0o600)

    def map_krbd(self, guest: GuestShell, *, timeout_s: float = 120) -> dict[str, str]:
        """Map each krbd disk's image with the guest's kernel driver: disk -> /dev/rbdN."""
        if not self.krbd:
            return {}
        guest.run("[ -d /sys/bus/rbd ] || vmlab-modules rbd || modprobe rbd", timeout_s=timeout_s)
        client = self.info.client_id
        secret = base64.b64encode(read_key(self.info.keyring_path, f"client.{client}"))
        mon = krbd_mon_addr(self.info.mon_addr)
        devices = {}
        for disk, (pool, image) in self.krbd.items():
            line = f"{mon} name={client},secret={secret.decode()} {pool} {image} -"
            try:
                guest.run(_RBD_ADD, timeout_s=timeout_s, stdin=line.encode())
            except GuestError as exc:
                raise GuestError(
                    f"disk {disk}: the guest's kernel did not map {pool}/{image} from {mon}: "
                    f"{exc.stderr.decode(errors='replace').strip()}\n"
                    f"guest kernel log:\n{_kernel_log(guest)}",
                    hint="libceph's and rbd's messages above say why",
                ) from exc
            found = guest.run(
                "for d in /sys/bus/rbd/devices/*; do "
                f'[ "$(cat $d/pool)/$(cat $d/name)" = {shlex.quote(f"{pool}/{image}")} ] '
                "&& echo /dev/rbd${d##*/}; done",
                timeout_s=30,
            )
            nodes = found.stdout.decode().split()
            if len(nodes) != 1:
                raise GuestError(
                    f"disk {disk}: mapping {pool}/{image} in the guest gave {nodes or 'no device'}",
                    hint="read the guest's dmesg (serial.log) for libceph/rbd messages",
                )
            devices[disk] = nodes[0]
        return devices

    def fio_job(self, job: FioJob) -> FioJob:
        """``job`` through fio's rbd engine when its disk is one of the cluster's images."""
        found = self.images.get(job.disk)
        if found is None:
            return job
        pool, image = found
        options = {**job.options, "clientname": "admin", "pool": pool, "rbdname": image}
        return job.model_copy(update={"ioengine": "rbd", "options": options})


# With rbd's single_major (the default since Linux 4.2) ``add`` refuses every mapping with
# EINVAL and no log line; ``add_single_major`` is the one that maps.
_RBD_ADD = "f=/sys/bus/rbd/add_single_major; [ -e $f ] || f=/sys/bus/rbd/add; cat > $f"


def _kernel_log(guest: GuestShell, lines: int = 20) -> str:
    """The tail of the guest's kernel log, for an error (empty when even that fails)."""
    try:
        return guest.run(f"dmesg | tail -n {lines}", timeout_s=30).stdout.decode(errors="replace")
    except GuestError:
        return ""


def image_of(disk: Disk) -> tuple[str, str, int]:
    backend = disk.backend
    assert isinstance(backend, RbdBackend)
    return backend.pool, backend.image or f"vmlab-{disk.name}", backend.size_bytes


class GuestServer:
    name = "guest"

    def preview(self, disk: Disk, source: DiskSource) -> Preview:
        pool, image, _ = image_of(disk)
        return Preview(
            source=no_device(disk),
            title="the guest is the Ceph client",
            steps=f"micro Ceph cluster in the lab network; fio's rbd engine on {pool}/{image}",
        )

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        if ctx.lab is None:
            raise HostError(
                f"disk {disk.name}: the guest as Ceph client needs a lab network",
                hint="give the guest a lab NIC (guest.nics)",
            )
        if ctx.guest_ceph is None:
            cluster = MicroCluster(
                ctx.scratch_root / f"ceph-{ctx.case.id}",
                bind_addr=str(ctx.lab.gateway),
                netns=ctx.lab.name,
            )
            stack.callback(cluster.purge)
            ctx.stage("starting a Ceph cluster in the lab network")
            ctx.guest_ceph = GuestCeph(cluster=cluster, info=cluster.up())
        pool, image, size = image_of(disk)
        ctx.guest_ceph.cluster.ensure_pool(pool)
        ctx.guest_ceph.cluster.ensure_image(pool, image, size)
        assert isinstance(disk.backend, RbdBackend)
        mapped = ctx.guest_ceph.krbd if disk.backend.krbd else ctx.guest_ceph.images
        mapped[disk.name] = (pool, image)
        return no_device(disk)


def krbd_mon_addr(mon_host: str) -> str:
    """The monitor address the kernel client takes (msgr1, ``ip:port``) from a ``mon host``
    value such as ``[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]``."""
    match = re.search(r"v1:([^,\]/]+)", mon_host)
    if match is None:
        raise HostError(
            f"the cluster's mon host {mon_host!r} has no msgr1 (v1:) address for the kernel client",
            hint="the micro cluster binds both; an external cluster needs ms_bind_msgr1",
        )
    return match.group(1)


def no_device(disk: Disk) -> DiskSource:
    """The placeholder source of a disk the guest reaches by itself (no device in QEMU)."""
    return DiskSource(path=Path(f"rbd-in-guest:{disk.name}"))
