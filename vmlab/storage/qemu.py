"""Disks QEMU opens itself (``served_by: qemu``): files, host block devices, and RBD images
through QEMU's librbd driver. Nothing to start; an RBD image gets its client key in a private
file for QEMU's secret object."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from vmlab.render.model import DiskSource
from vmlab.spec import Disk
from vmlab.storage.base import Preview, ServeContext
from vmlab.storage.ceph import write_key_file


def key_file(guest_dir: Path, disk: Disk) -> Path:
    return guest_dir / f"rbd-{disk.name}.key"


class QemuServer:
    name = "qemu"

    def preview(self, disk: Disk, source: DiskSource) -> Preview:
        if source.rbd is not None:
            placeholder = key_file(Path("<guest-dir>"), disk)
            source = replace(source, rbd=replace(source.rbd, key_file=placeholder))
        return Preview(source=source)

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        if source.rbd is None:
            return source
        return replace(source, rbd=write_key_file(source.rbd, key_file(ctx.private_dir, disk)))
