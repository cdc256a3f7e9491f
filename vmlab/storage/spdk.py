"""An SPDK vhost target serving a disk as vhost-user-blk (``served_by: spdk``): the RPC calls
that make the bdev and controller, made on the run's target (:mod:`vmlab.spdk.targets`: one
vmlab starts, shared by the run's cases, or one the user runs).

Each case gets its controllers and bdevs for itself (deleted when the case ends), the span of
the target's log it ran under (``spdk-<disk>.log``), and a watcher: a target that dies while
the case runs fails the case at once, with that log.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from vmlab.errors import HostError, LaunchError, VmlabError
from vmlab.render.model import DiskSource
from vmlab.results.rundir import CaseDir
from vmlab.spdk import plan as spdk
from vmlab.spdk.target import SpdkTarget
from vmlab.spec import Disk, MallocBackend
from vmlab.storage.base import Preview, ServeContext

FILE_BLOCK_SIZE = 512


def spdk_backend(disk: Disk, source: DiskSource) -> spdk.SpdkBackend:
    """The bdev behind the disk: malloc (RAM in the target), rbd through librbd (with the
    spec's keyring), uring for ``aio: io_uring`` files and block devices, else aio."""
    if isinstance(disk.backend, MallocBackend):
        return spdk.MallocBackend(size_bytes=disk.backend.size_bytes)
    if source.rbd is not None:
        return spdk.RbdBackend(
            pool=source.rbd.pool,
            image=source.rbd.image,
            user_id=source.rbd.user,
            config_file=source.rbd.conf,
            key_file=source.rbd.keyring,
        )
    # SPDK reads a block device's block size, not a file's: files get 512-byte blocks
    block_size = None if source.protocol == "host_device" else FILE_BLOCK_SIZE
    if disk.aio == "io_uring":
        return spdk.UringBackend(filename=source.path, block_size=block_size)
    return spdk.AioBackend(filename=source.path, block_size=block_size)


def spdk_plan(disk: Disk, source: DiskSource) -> spdk.DiskPlan:
    """The RPC calls that make ``disk`` a vhost-user-blk controller (bdev named by the serial,
    which SPDK hands the guest as the virtio serial)."""
    return spdk.render_plan(
        disk.serial, spdk_backend(disk, source), cpumask=disk.spdk_target.cpumask
    )


def _log_span(target: SpdkTarget, case_dir: CaseDir, disk: Disk, start: int) -> None:
    """The part of the target's log written while the case ran, into the case's folder."""
    if target.log_path is None or not target.log_path.exists():
        return
    with target.log_path.open("rb") as fh:
        fh.seek(start)
        case_dir.write_bytes(f"spdk-{disk.name}.log", fh.read())


def _watch(target: SpdkTarget, case_dir: CaseDir, disk: Disk) -> VmlabError | None:
    failure = target.failure()
    if failure is None:
        return None
    return LaunchError(
        f"disk {disk.name}: {failure.message}",
        log=case_dir.file(f"spdk-{disk.name}.log") if target.log_path else None,
        hint=failure.hint,
    )


class SpdkServer:
    name = "spdk"

    def preview(self, disk: Disk, source: DiskSource) -> Preview:
        plan = spdk_plan(disk, source)
        return Preview(
            source=replace(source, socket=Path(f"<spdk-vhost-dir>/{plan.ctrlr}")),
            title="SPDK RPC calls, made first",
            steps=plan.describe(),
        )

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        if ctx.spdk is None:
            raise HostError(
                f"disk {disk.name}: no SPDK targets for this case",
                hint="serve SPDK disks through a bench run (vmlab bench)",
            )
        plan = spdk_plan(disk, source)
        ctx.case_dir.write_json(f"spdk-{disk.name}.json", plan.to_json())
        ctx.stage("starting the SPDK target")
        target = ctx.spdk.get(disk.spdk_target)
        start = target.log_path.stat().st_size if target.log_path else 0
        stack.callback(_log_span, target, ctx.case_dir, disk, start)
        served = target.add_disk(plan)
        stack.callback(target.remove_disk, served)
        ctx.watchers.append(lambda: _watch(target, ctx.case_dir, disk))
        return replace(source, socket=served.socket, server_log=target.log_path)
