"""Where each disk's data lives for a case: scratch files, per-guest overlays, host devices,
and the sidecars (qemu-storage-daemon) that serve vhost-user disks."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.info import ClusterInfo
from vmlab.ceph.rbd import RbdImages
from vmlab.errors import CommandError, HostError, VmlabError
from vmlab.host import scratch_root
from vmlab.launch.qemu import Deadlines
from vmlab.launch.sidecars import qsd_export
from vmlab.launch.spdk import AioBackend, DiskPlan, SpdkApp, SpdkTarget, render_plan
from vmlab.launch.spdk import RbdBackend as SpdkRbd
from vmlab.launch.vhost_scsi import LioDisk, LioPlan, LioTarget, render_lio
from vmlab.paths import state_dir
from vmlab.plan import Case
from vmlab.render import DiskSource, RbdTarget
from vmlab.results.rundir import CaseDir
from vmlab.spec import BlockBackend, CephCluster, Disk, FileBackend, RbdBackend

log = logging.getLogger(__name__)


def _qemu_img(*args: str) -> None:
    argv = ["qemu-img", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise HostError("qemu-img is not installed", hint="apt-get install qemu-utils") from exc
    if done.returncode != 0:
        raise CommandError(
            "qemu-img failed", argv=argv, returncode=done.returncode, output=done.stderr
        )


class ScratchDisks:
    """Files made for a run: shared bases, and per-case overlays. Removed when the run ends.

    With `dry_run` nothing is created: paths are only computed (for `vmlab render`).
    """

    def __init__(self, root: Path, *, dry_run: bool = False) -> None:
        self.root = root
        self.dry_run = dry_run
        self.made: dict[tuple[str, str, int], Path] = {}
        self.ceph = CephSessions(run_id=root.name, dry_run=dry_run)

    def base(self, name: str, backend: FileBackend) -> Path:
        if backend.path is not None:
            return backend.path
        key = (name, backend.format, backend.size_bytes)
        if key not in self.made:
            path = self.root / f"{name}-{backend.size}.{backend.format}"
            if not self.dry_run:
                self.root.mkdir(parents=True, exist_ok=True)
                self._create(path, backend)
            self.made[key] = path
        return self.made[key]

    @staticmethod
    def _create(path: Path, backend: FileBackend) -> None:
        if backend.format == "qcow2":
            _qemu_img("create", "-q", "-f", "qcow2", str(path), str(backend.size_bytes))
            return
        with path.open("wb") as fh:
            # Allocated, not sparse: guest writes never wait on host block allocation.
            fh.truncate(backend.size_bytes)
            try:
                os.posix_fallocate(fh.fileno(), 0, backend.size_bytes)
            except OSError as exc:
                log.debug("fallocate %s: %s (left sparse)", path, exc)

    def overlay(self, case_id: str, name: str, base: Path, base_format: str) -> Path:
        """A qcow2 overlay for one guest, so the shared base is never written."""
        path = self.root / case_id / f"{name}.overlay.qcow2"
        if not self.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a resumed case starts from the base again
            _qemu_img(
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base.resolve()),
                "-F",
                base_format,
                str(path),
            )
        return path

    def cleanup(self) -> None:
        try:
            self.ceph.cleanup()
        finally:
            if not self.dry_run:
                shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def scratch_disks(run_id: str) -> Iterator[ScratchDisks]:
    disks = ScratchDisks(scratch_root() / run_id)
    try:
        yield disks
    finally:
        disks.cleanup()


class CephSessions:
    """The Ceph clusters and RBD images a run uses: the micro cluster is brought up when a
    spec needs it (and taken down again if this run started it); images vmlab creates for
    the run are removed at its end."""

    def __init__(self, *, run_id: str, dry_run: bool) -> None:
        self.run_id = run_id
        self.dry_run = dry_run
        self.infos: dict[Path | None, ClusterInfo] = {}
        self.started_micro: MicroCluster | None = None
        self.images: dict[tuple[Path | None, str, str], str] = {}
        self.created: list[tuple[ClusterInfo, str, str]] = []
        self.mapped: dict[tuple[Path, str, str], Path] = {}
        self.devices: list[tuple[ClusterInfo, Path]] = []

    def info(self, cluster: CephCluster) -> ClusterInfo:
        if cluster.conf in self.infos:
            return self.infos[cluster.conf]
        if cluster.is_micro:
            micro = MicroCluster(state_dir() / "ceph")
            if self.dry_run:
                conf = state_dir() / "ceph" / "ceph.conf"
                info = ClusterInfo(
                    conf_path=conf,
                    keyring_path=conf.with_name("keyring"),
                    fsid="",
                    mon_addr="",
                    pool="vmlab",
                    state_dir=conf.parent,
                )
            else:
                was_running = micro.status().running
                info = micro.up()
                if not was_running:
                    self.started_micro = micro
        else:
            assert cluster.conf is not None
            keyring = cluster.keyring or Path(f"/etc/ceph/ceph.client.{cluster.client_id}.keyring")
            info = ClusterInfo(
                conf_path=cluster.conf,
                keyring_path=keyring,
                fsid="",
                mon_addr="",
                pool="",
                client_id=cluster.client_id,
                state_dir=state_dir() / "ceph-clients" / _slug(str(cluster.conf)),
            )
        self.infos[cluster.conf] = info
        return info

    def image(self, disk_name: str, backend: RbdBackend) -> DiskSource:
        info = self.info(backend.cluster)
        key = (backend.cluster.conf, backend.pool, backend.image or f"@{disk_name}")
        if key not in self.images:
            name = backend.image or f"vmlab-{self.run_id}-{disk_name}"[:96]
            if not self.dry_run:
                images = RbdImages(info)
                if images.get(backend.pool, name) is None:
                    images.create(backend.pool, name, backend.size_bytes)
                    self.created.append((info, backend.pool, name))
            self.images[key] = name
        name = self.images[key]
        if backend.krbd:
            device = Path("/dev/rbd<N>")
            if not self.dry_run:
                device = self.mapped.get((info.conf_path, backend.pool, name)) or RbdImages(
                    info
                ).map_krbd(backend.pool, name)
                self.mapped[(info.conf_path, backend.pool, name)] = device
                self.devices.append((info, device))
            return DiskSource(path=device, format="raw", protocol="host_device")
        target = RbdTarget(
            pool=backend.pool,
            image=name,
            conf=info.conf_path,
            user=info.client_id,
            keyring=info.keyring_path,
        )
        return DiskSource(
            path=Path(f"rbd:{backend.pool}/{name}"), format="raw", protocol="rbd", rbd=target
        )

    def cleanup(self) -> None:
        try:
            for info, device in reversed(self.devices):
                try:
                    RbdImages(info).unmap_krbd(device)
                except VmlabError as exc:
                    log.warning("could not unmap %s: %s", device, exc)
            for info, pool, name in reversed(self.created):
                try:
                    RbdImages(info).remove(pool, name)
                except VmlabError as exc:
                    log.warning("could not remove RBD image %s/%s: %s", pool, name, exc)
        finally:
            if self.started_micro is not None:
                self.started_micro.down()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[-60:]


def check_block_device(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise HostError(
            f"block device {path} does not exist",
            hint="check backend.path; for krbd, map the image first",
        ) from exc
    if not stat.S_ISBLK(mode):
        raise HostError(
            f"{path} is not a block device", hint="use backend type file for regular files"
        )


def local_source(case: Case, disk: Disk, scratch: ScratchDisks) -> DiskSource:
    """Where the disk's bytes are on this host, before any sidecar serves them."""
    backend = disk.backend
    if isinstance(backend, RbdBackend):
        return scratch.ceph.image(disk.name, backend)
    if isinstance(backend, BlockBackend):
        if not scratch.dry_run:
            check_block_device(backend.path)
        return DiskSource(path=backend.path, format="raw", protocol="host_device")
    assert isinstance(backend, FileBackend)
    base = scratch.base(disk.name, backend)
    if backend.overlay:
        overlay = scratch.overlay(case.id, disk.name, base, backend.format)
        return DiskSource(path=overlay, format="qcow2")
    return DiskSource(path=base, format=backend.format)


def spdk_plan(disk: Disk, source: DiskSource) -> DiskPlan:
    """The RPC calls that make `disk` a vhost-user-blk controller (bdev named by the serial,
    which SPDK hands the guest as the virtio serial): bdev_rbd_create for RBD through
    librbd, bdev_aio_create for files and block devices."""
    assert disk.spdk is not None
    if source.rbd is not None:
        bdev: AioBackend | SpdkRbd = SpdkRbd(
            pool=source.rbd.pool,
            image=source.rbd.image,
            user_id=source.rbd.user,
            config_file=source.rbd.conf,
        )
    else:
        bdev = AioBackend(filename=source.path)
    return render_plan(disk.serial, bdev, cpumask=disk.spdk.cpumask)


def spdk_export(stack: ExitStack, disk: Disk, source: DiskSource, case_dir: CaseDir) -> DiskSource:
    assert disk.spdk is not None
    plan = spdk_plan(disk, source)
    case_dir.write_json(f"spdk-{disk.name}.json", plan.to_json())
    if disk.spdk.rpc_socket is not None:
        target = SpdkTarget.attach(disk.spdk.rpc_socket)
    else:
        assert disk.spdk.binary is not None
        app = SpdkApp(
            str(disk.spdk.binary), cpumask=disk.spdk.cpumask, mem_size_mib=disk.spdk.mem_mib
        )
        target = SpdkTarget.spawn(app, log_path=case_dir.file(f"spdk-{disk.name}.log"))
    served = stack.enter_context(target).add_disk(plan)
    return replace(source, socket=served.socket)


def lio_plan(disk: Disk, source: DiskSource) -> LioPlan:
    backstore: Literal["block", "fileio"] = (
        "block" if source.protocol == "host_device" else "fileio"
    )
    return render_lio(LioDisk(name=f"vmlab-{disk.name}", path=source.path, backstore=backstore))


@contextmanager
def served_disks(
    case: Case, scratch: ScratchDisks, *, case_dir: CaseDir, deadlines: Deadlines, qsd: str | None
) -> Iterator[dict[str, DiskSource]]:
    """Every disk of the case ready for QEMU; sidecars stop when the block exits."""
    with ExitStack() as stack:
        sources: dict[str, DiskSource] = {}
        for disk in case.variant.guest.disks:
            if disk.served_by == "guest":  # the guest reaches the cluster itself
                sources[disk.name] = DiskSource(path=Path(f"rbd-in-guest:{disk.name}"))
                continue
            source = local_source(case, disk, scratch)
            if disk.served_by == "qsd":
                if qsd is None:
                    raise HostError(
                        "qemu-storage-daemon is not installed", hint="apt-get install qemu-utils"
                    )
                source = stack.enter_context(
                    qsd_export(qsd, disk, source, case_dir=case_dir, deadlines=deadlines)
                )
            elif disk.served_by == "spdk":
                source = spdk_export(stack, disk, source, case_dir)
            elif disk.served_by == "lio":
                plan = lio_plan(disk, source)
                case_dir.write_text(f"lio-{disk.name}.txt", plan.describe() + "\n")
                stack.enter_context(LioTarget(plan))
                source = replace(source, wwpn=plan.wwpn)
            sources[disk.name] = source
        yield sources
