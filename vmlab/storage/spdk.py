"""An SPDK vhost target serving a disk as vhost-user-blk (``served_by: spdk``): the RPC calls
that make the bdev and controller, made on a target vmlab starts or one the user runs."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from vmlab.launch.spdk import AioBackend, DiskPlan, SpdkApp, SpdkTarget, render_plan
from vmlab.launch.spdk import RbdBackend as SpdkRbd
from vmlab.render.model import DiskSource
from vmlab.spec import Disk
from vmlab.storage.base import Preview, ServeContext


def spdk_plan(disk: Disk, source: DiskSource) -> DiskPlan:
    """The RPC calls that make `disk` a vhost-user-blk controller (bdev named by the serial,
    which SPDK hands the guest as the virtio serial): bdev_rbd_create for RBD through
    librbd (with the spec's keyring), bdev_aio_create for files and block devices."""
    assert disk.spdk is not None
    if source.rbd is not None:
        bdev: AioBackend | SpdkRbd = SpdkRbd(
            pool=source.rbd.pool,
            image=source.rbd.image,
            user_id=source.rbd.user,
            config_file=source.rbd.conf,
            key_file=source.rbd.keyring,
        )
    else:
        bdev = AioBackend(filename=source.path)
    return render_plan(disk.serial, bdev, cpumask=disk.spdk.cpumask)


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
        assert disk.spdk is not None
        plan = spdk_plan(disk, source)
        ctx.case_dir.write_json(f"spdk-{disk.name}.json", plan.to_json())
        if disk.spdk.rpc_socket is not None:
            target = SpdkTarget.attach(disk.spdk.rpc_socket)
        else:
            assert disk.spdk.binary is not None
            app = SpdkApp(
                str(disk.spdk.binary), cpumask=disk.spdk.cpumask, mem_size_mib=disk.spdk.mem_mib
            )
            target = SpdkTarget.spawn(app, log_path=ctx.case_dir.file(f"spdk-{disk.name}.log"))
        served = stack.enter_context(target).add_disk(plan)
        return replace(source, socket=served.socket)
