"""One disk on an SPDK target: its backend, the RPC calls that make it a vhost-user-blk
controller, and the calls that remove it again.

:func:`render_plan` is pure (``vmlab render`` prints its plan); :class:`vmlab.spdk.target.
SpdkTarget` runs it. Parameter names follow SPDK's ``doc/jsonrpc.md`` for v23.01, whose target
rejects unknown names, so optional ones are only sent when set.

The guest sees the bdev name as the virtio-blk serial (SPDK answers VIRTIO_BLK_T_GET_ID with
it, 20 bytes at most), so a disk's bdev is named after the disk and kept within 20 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.errors import SpecError
from vmlab.spdk.cpumask import format_cpumask, parse_cpumask

SERIAL_MAX = 20  # VIRTIO_BLK_ID_BYTES: what the guest sees of the bdev name
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")

# create method -> (delete method, parameter naming the object)
_UNDO: dict[str, tuple[str, str]] = {
    "bdev_malloc_create": ("bdev_malloc_delete", "name"),
    "bdev_aio_create": ("bdev_aio_delete", "name"),
    "bdev_uring_create": ("bdev_uring_delete", "name"),
    "bdev_rbd_register_cluster": ("bdev_rbd_unregister_cluster", "name"),
    "bdev_rbd_create": ("bdev_rbd_delete", "name"),
    "vhost_create_blk_controller": ("vhost_delete_controller", "ctrlr"),
}


@dataclass(frozen=True)
class RpcCall:
    """One JSON-RPC request: what :func:`render_plan` prints and the target is sent."""

    method: str
    params: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params)}

    def __str__(self) -> str:
        return f"{self.method} {json.dumps(dict(self.params), sort_keys=True)}"


def undo_call(call: RpcCall, result: object = None) -> RpcCall | None:
    """The delete call matching a create call (None for calls that create nothing).

    ``result`` is what the create returned: bdev creates answer the bdev's name.
    """
    spec = _UNDO.get(call.method)
    if spec is None:
        return None
    method, key = spec
    name = result if isinstance(result, str) and key == "name" else call.params[key]
    return RpcCall(method, {key: name})


@dataclass(frozen=True)
class AioBackend:
    """A file or host block device through Linux AIO (bdev_aio_create). SPDK detects the
    block size of a block device only: a regular file needs ``block_size``."""

    filename: Path
    block_size: int | None = None


@dataclass(frozen=True)
class UringBackend:
    """A file or host block device through io_uring (needs SPDK --with-uring)."""

    filename: Path
    block_size: int | None = None


@dataclass(frozen=True)
class MallocBackend:
    """A RAM disk inside the target: the ceiling of the vhost path itself."""

    size_bytes: int
    block_size: int = 512


@dataclass(frozen=True)
class RbdBackend:
    """A Ceph RBD image through librbd inside the target (needs SPDK --with-rbd): a cluster
    registered for the disk (user, ceph.conf, keyring), unregistered after it."""

    pool: str
    image: str
    user_id: str  # Ceph id without "client."
    config_file: Path
    key_file: Path  # a keyring
    block_size: int = 512


SpdkBackend = AioBackend | UringBackend | MallocBackend | RbdBackend


@dataclass(frozen=True)
class DiskPlan:
    """The RPC calls that make one vhost-user-blk disk, and those that remove it again."""

    name: str  # the bdev: what the guest sees as the disk's serial
    ctrlr: str  # the controller: its socket is <vhost socket dir>/<ctrlr>
    cpumask: str | None
    setup: tuple[RpcCall, ...]
    teardown: tuple[RpcCall, ...]  # after a complete setup, in this order

    def describe(self) -> str:
        lines = [f"SPDK vhost-user-blk disk {self.name} (controller {self.ctrlr})"]
        lines += [f"  {call}" for call in self.setup]
        lines.append("  teardown:")
        lines += [f"  {call}" for call in self.teardown]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ctrlr": self.ctrlr,
            "cpumask": self.cpumask,
            "setup": [c.to_json() for c in self.setup],
            "teardown": [c.to_json() for c in self.teardown],
        }


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise SpecError(
            f"SPDK disk name {name!r} is not usable",
            hint=f"use 1-{SERIAL_MAX} letters, digits, '_' or '-': the name becomes the bdev "
            "name, which the guest sees as the disk's serial",
        )
    return name


def controller_name(name: str) -> str:
    """The vhost controller of disk ``name``; also its socket's file name."""
    return f"vmlab.{check_name(name)}"


def _bdev_calls(name: str, backend: SpdkBackend) -> list[RpcCall]:
    match backend:
        case MallocBackend(size_bytes=size, block_size=block_size):
            if size % block_size or size <= 0:
                raise SpecError(
                    f"malloc disk {name}: {size} bytes is not a multiple of {block_size}",
                    hint="give the malloc backend a size in MiB (e.g. 256M)",
                )
            malloc = {"name": name, "num_blocks": size // block_size, "block_size": block_size}
            return [RpcCall("bdev_malloc_create", malloc)]
        case (
            AioBackend(filename=filename, block_size=block_size)
            | UringBackend(filename=filename, block_size=block_size)
        ):
            method = "bdev_aio_create" if isinstance(backend, AioBackend) else "bdev_uring_create"
            params: dict[str, Any] = {"name": name, "filename": str(filename)}
            if block_size is not None:
                params["block_size"] = block_size
            return [RpcCall(method, params)]
        case RbdBackend():
            cluster = f"vmlab.{name}.rados"
            register = {
                "name": cluster,
                "user_id": backend.user_id,
                "config_file": str(backend.config_file),
                "key_file": str(backend.key_file),
            }
            create = {
                "name": name,
                "pool_name": backend.pool,
                "rbd_name": backend.image,
                "block_size": backend.block_size,
                "cluster_name": cluster,
            }
            return [
                RpcCall("bdev_rbd_register_cluster", register),
                RpcCall("bdev_rbd_create", create),
            ]


def render_plan(name: str, backend: SpdkBackend, *, cpumask: str | int | None = None) -> DiskPlan:
    """The RPC calls vmlab makes for one disk; pure, no SPDK needed."""
    ctrlr = controller_name(name)
    calls = _bdev_calls(name, backend)
    controller: dict[str, Any] = {"ctrlr": ctrlr, "dev_name": name}
    if cpumask is not None:
        controller["cpumask"] = format_cpumask(parse_cpumask(cpumask))
    calls.append(RpcCall("vhost_create_blk_controller", controller))
    teardown = [u for c in reversed(calls) if (u := undo_call(c)) is not None]
    return DiskPlan(
        name=name,
        ctrlr=ctrlr,
        cpumask=controller.get("cpumask"),
        setup=tuple(calls),
        teardown=tuple(teardown),
    )
