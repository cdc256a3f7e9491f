"""Where a disk's bytes are, as a spec says it: a file, a host block device, an RBD image (on
vmlab's micro cluster or a given one), a RAM disk inside SPDK; and QEMU's I/O limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from vmlab.sizes import parse_size
from vmlab.spec.base import Model, Size


class FileBackend(Model):
    """A file on the host, raw or qcow2. Without a path, a scratch file made for the run.

    With `overlay: true` every guest writes to its own qcow2 overlay over the file (or over
    a shared scratch base), so the base is never written.
    """

    type: Literal["file"] = "file"
    path: Path | None = None
    format: Literal["raw", "qcow2"] = "raw"
    size: Size = "1G"
    overlay: bool = False

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class BlockBackend(Model):
    """A host block device (a partition, an LV, a krbd /dev/rbdN). Its contents are overwritten."""

    type: Literal["block"] = "block"
    path: Path

    @property
    def format(self) -> str:
        return "raw"


class CephCluster(Model):
    """A Ceph cluster by ceph.conf, client id and keyring; no conf: vmlab's micro cluster."""

    conf: Path | None = None
    client_id: str = Field(default="admin", pattern=r"^[A-Za-z0-9_.-]+$")
    keyring: Path | None = None

    @property
    def is_micro(self) -> bool:
        return self.conf is None


class RbdBackend(Model):
    """An RBD image. Without `image`, vmlab creates one of `size` for the run and removes it
    afterwards; a named image is used as it is (and created, then removed, if missing)."""

    type: Literal["rbd"] = "rbd"
    pool: str = Field(default="vmlab", pattern=r"^[A-Za-z0-9_.-]+$")
    image: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    size: Size = "1G"
    cluster: CephCluster = Field(default_factory=CephCluster)
    krbd: bool = Field(
        default=False,
        description="map it with the kernel RBD driver and use /dev/rbdN: on the host (rbd "
        "device map), served as a host block device; with target guest, in the guest itself "
        "(fio runs on its /dev/rbdN instead of fio's rbd engine)",
    )

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def format(self) -> str:
        return "raw"


# QEMU's THROTTLE_VALUE_MAX (include/qemu/throttle.h): a larger limit is refused at start.
THROTTLE_MAX = 10**15


class Throttle(Model):
    """QEMU I/O limits on one disk (a throttle group of its own): the ground truth."""

    iops_total: int | None = Field(default=None, gt=0, le=THROTTLE_MAX)
    iops_read: int | None = Field(default=None, gt=0, le=THROTTLE_MAX)
    iops_write: int | None = Field(default=None, gt=0, le=THROTTLE_MAX)
    bps_total: int | None = Field(default=None, gt=0, le=THROTTLE_MAX)


class MallocBackend(Model):
    """A RAM disk inside the SPDK target (bdev_malloc_create): the ceiling of the vhost-user
    path itself. Only an SPDK target serves it (target: spdk)."""

    type: Literal["malloc"] = "malloc"
    size: str = "256M"

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if parse_size(v) % (1 << 20):
            raise ValueError("a malloc disk's size is whole MiB (e.g. 256M)")
        return v

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def format(self) -> str:
        return "raw"


Backend = Annotated[
    Union[FileBackend, BlockBackend, RbdBackend, MallocBackend],  # noqa: UP007
    Field(discriminator="type"),
]
