"""Serving a disk: where its bytes live (the backing) and who serves them to the guest.

A disk's bytes live in a backing store (:mod:`vmlab.storage.backing`: scratch files, per-guest
overlays, host block devices, RBD images of :mod:`vmlab.storage.ceph`). One *server* makes
them a device the guest sees, chosen by ``Disk.served_by``:

=========  ==============================================  ===========================
served_by  server                                          module
=========  ==============================================  ===========================
qemu       QEMU's own block layer opens the backing store  :mod:`vmlab.storage.qemu`
qsd        qemu-storage-daemon, vhost-user-blk export      :mod:`vmlab.storage.qsd`
spdk       an SPDK vhost target, vhost-user-blk            :mod:`vmlab.storage.spdk`
lio        kernel LIO, vhost-scsi                          :mod:`vmlab.storage.lio`
guest      nothing on the host: the guest is Ceph client   :mod:`vmlab.storage.guest`
=========  ==============================================  ===========================

The bench (:func:`served_disks`) and `vmlab render` (:func:`preview_disks`) go through the
same servers, so the preview is the plan that runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from vmlab.plan import Case
from vmlab.render.model import DiskSource
from vmlab.spec import Disk
from vmlab.storage.backing import Backing, PreviewBacking, disk_source
from vmlab.storage.base import Preview, ServeContext, Server
from vmlab.storage.guest import GuestServer, no_device
from vmlab.storage.lio import LioServer
from vmlab.storage.qemu import QemuServer
from vmlab.storage.qsd import QsdServer
from vmlab.storage.spdk import SpdkServer

SERVERS: dict[str, Server] = {
    s.name: s for s in (QemuServer(), QsdServer(), SpdkServer(), LioServer(), GuestServer())
}


def server_of(disk: Disk) -> Server:
    return SERVERS[disk.served_by]


def _backed(backing: Backing, case: Case, disk: Disk) -> DiskSource:
    if disk.guest_is_client:  # no backing store on the host at all
        return no_device(disk)
    return disk_source(backing, case, disk)


@contextmanager
def served_disks(
    case: Case, backing: Backing, ctx: ServeContext
) -> Iterator[dict[str, DiskSource]]:
    """Every disk of the case ready for QEMU; whatever serves them stops when the block
    exits, newest first, on every path."""
    with ExitStack() as stack:
        sources: dict[str, DiskSource] = {}
        for disk in case.variant.guest.disks:
            source = _backed(backing, case, disk)
            sources[disk.name] = server_of(disk).serve(stack, disk, source, ctx)
        yield sources


def preview_disks(case: Case, backing: PreviewBacking | None = None) -> dict[str, Preview]:
    """What each disk of the case would be served as, creating and starting nothing."""
    backing = backing or PreviewBacking()
    return {
        disk.name: server_of(disk).preview(disk, _backed(backing, case, disk))
        for disk in case.variant.guest.disks
    }
