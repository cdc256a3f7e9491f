"""SPDK vhost-user-blk target: JSON-RPC client, per-disk RPC plans, and the target's lifecycle.

SPDK's RPC server speaks JSON-RPC 2.0 over a unix socket (``/var/tmp/spdk.sock`` unless the
app was started with ``-r``): one JSON object per request, no length prefix, and a response
that may arrive split over several ``recv()`` calls, so :class:`SpdkRpc` decodes it
incrementally (``json.JSONDecoder.raw_decode``), as SPDK's own ``scripts/rpc.py`` does.

Parameter names follow SPDK's ``python/spdk/rpc/{bdev,vhost}.py`` and ``doc/jsonrpc.md``. The
target rejects unknown parameter names, so optional ones are only sent when set.

A disk is a :class:`DiskPlan`: the RPC calls that create it (a bdev, for RBD a registered
cluster first, then a vhost-blk controller), and their undo in reverse order.
:func:`render_plan` builds it without SPDK (``vmlab render`` prints it); :class:`SpdkTarget`
runs it against a target it attaches to or starts (``spdk_tgt``/``vhost -r SOCK -S DIR -m MASK
-s MB``), and in ``finally`` deletes what it created and stops what it started.

The guest sees the bdev name as the virtio-blk serial (SPDK answers VIRTIO_BLK_T_GET_ID with
it, 20 bytes at most), so a disk's bdev is named after the disk and kept within 20 characters.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vmlab.errors import CommandError, HostError, LaunchError, SpecError
from vmlab.paths import runtime_dir
from vmlab.proc import die_with_parent
from vmlab.qemuopts import qemu_quote

log = logging.getLogger(__name__)

DEFAULT_RPC_SOCKET = Path("/var/tmp/spdk.sock")
UNIX_PATH_MAX = 107  # usable bytes of sun_path
SERIAL_MAX = 20  # VIRTIO_BLK_ID_BYTES: what the guest sees of the bdev name
_RECV_BYTES = 65536
_MIB = 1024 * 1024

# JSON-RPC 2.0 codes SPDK uses; other errors carry a negative errno.
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602

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

# What a build lacks when the target does not know a method.
_BUILD_HINTS = {
    "bdev_rbd_": "SPDK built with `./configure --with-rbd`",
    "bdev_uring_": "SPDK built with `./configure --with-uring`",
    "vhost_": "an SPDK app with vhost: spdk_tgt or vhost (build/bin/)",
}


# --------------------------------------------------------------------------------------------
# cpumasks


def parse_cpumask(mask: str | int) -> int:
    """SPDK's cpumask syntax: hex (``0x3``, ``3``) or a core list (``[0,2-3]``); an int as is."""
    if isinstance(mask, int):
        value = mask
    else:
        text = mask.strip()
        try:
            if text.startswith("[") and text.endswith("]"):
                value = 0
                for part in filter(None, (p.strip() for p in text[1:-1].split(","))):
                    first, _, last = part.partition("-")
                    for core in range(int(first), int(last or first) + 1):
                        value |= 1 << core
            else:
                value = int(text.removeprefix("0x").removeprefix("0X"), 16)
        except ValueError:
            value = -1
    if value <= 0:
        raise SpecError(
            f"not a usable cpumask: {mask!r}",
            hint="write it in SPDK's syntax: hex (0x3) or a core list ([0,2-3]); "
            "it must name at least one core",
        )
    return value


def format_cpumask(mask: int) -> str:
    return f"0x{mask:x}"


def mask_cores(mask: int) -> list[int]:
    return [bit for bit in range(mask.bit_length()) if mask >> bit & 1]


def _describe_mask(mask: int) -> str:
    return f"{format_cpumask(mask)} (cores {','.join(map(str, mask_cores(mask)))})"


# --------------------------------------------------------------------------------------------
# RPC values


@dataclass(frozen=True)
class RpcCall:
    """One JSON-RPC request: what :func:`render_plan` prints and :class:`SpdkTarget` sends."""

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
class SpdkVersion:
    text: str  # "SPDK v24.01 git sha1 ..."
    major: int | None = None
    minor: int | None = None
    patch: int | None = None


@dataclass(frozen=True)
class VhostController:
    ctrlr: str
    cpumask: str
    socket: Path | None  # absent in SPDK releases before the "socket" field
    bdev: str | None  # backend_specific.block.bdev for a blk controller


def _rpc_error(method: str, params: Mapping[str, Any], error: object) -> CommandError:
    code: int | None = None
    message = str(error)
    if isinstance(error, dict):
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        message = str(error.get("message", message))
    if code == RPC_METHOD_NOT_FOUND:
        needs = next((v for k, v in _BUILD_HINTS.items() if method.startswith(k)), None)
        hint = f"this SPDK target does not know {method}" + (f": it needs {needs}" if needs else "")
    elif code == RPC_INVALID_PARAMS:
        hint = (
            f"the target rejected the parameters of {method}: compare them with "
            f"`scripts/rpc.py {method} -h` of this SPDK version, and read the target's log"
        )
    elif code == -errno.EEXIST:
        hint = (
            "an object of that name exists already (left by an earlier run?): list them with "
            "bdev_get_bdevs / vhost_get_controllers and delete it, or restart the target"
        )
    elif code in (-errno.ENODEV, -errno.ENOENT):
        hint = "a bdev, file, image or cluster it names does not exist; read the target's log"
    else:
        hint = "read the SPDK target's log"
    return CommandError(
        f"SPDK RPC {method} failed: {message}",
        argv=["spdk-rpc", method],
        returncode=code,
        output=f"params: {json.dumps(dict(params), sort_keys=True)}",
        hint=hint,
    )


# --------------------------------------------------------------------------------------------
# parameters, shared by the typed methods and render_plan


def _opt(params: dict[str, Any], key: str, value: object) -> None:
    if value is not None and value is not False:
        params[key] = value


def malloc_create_params(name: str, num_blocks: int, block_size: int) -> dict[str, Any]:
    return {"name": name, "num_blocks": num_blocks, "block_size": block_size}


def file_create_params(
    filename: Path | str, name: str, block_size: int | None = None, readonly: bool = False
) -> dict[str, Any]:
    """bdev_aio_create / bdev_uring_create (uring has no ``readonly``)."""
    params: dict[str, Any] = {"name": name, "filename": str(filename)}
    _opt(params, "block_size", block_size)
    _opt(params, "readonly", readonly)
    return params


def rbd_register_cluster_params(
    name: str,
    *,
    user_id: str | None = None,
    config_file: Path | str | None = None,
    key_file: Path | str | None = None,
    config_param: Mapping[str, str] | None = None,
    core_mask: str | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    _opt(params, "user_id", user_id)
    _opt(params, "config_file", None if config_file is None else str(config_file))
    _opt(params, "key_file", None if key_file is None else str(key_file))
    _opt(params, "config_param", None if config_param is None else dict(config_param))
    _opt(params, "core_mask", core_mask)
    return params


def rbd_create_params(
    name: str,
    pool_name: str,
    rbd_name: str,
    block_size: int,
    *,
    cluster_name: str | None = None,
    user_id: str | None = None,
    config: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Either a registered ``cluster_name`` or a per-bdev ``user_id`` + ``config`` map."""
    if cluster_name is not None and (user_id is not None or config is not None):
        raise SpecError(
            "an RBD bdev takes either a registered cluster or user_id/config, not both",
            hint="put user_id and config_file on the cluster (bdev_rbd_register_cluster)",
        )
    params: dict[str, Any] = {
        "name": name,
        "pool_name": pool_name,
        "rbd_name": rbd_name,
        "block_size": block_size,
    }
    _opt(params, "cluster_name", cluster_name)
    _opt(params, "user_id", user_id)
    _opt(params, "config", None if config is None else dict(config))
    return params


def blk_controller_params(
    ctrlr: str,
    dev_name: str,
    *,
    cpumask: str | int | None = None,
    readonly: bool = False,
    packed_ring: bool = False,
) -> dict[str, Any]:
    params: dict[str, Any] = {"ctrlr": ctrlr, "dev_name": dev_name}
    _opt(params, "cpumask", None if cpumask is None else format_cpumask(parse_cpumask(cpumask)))
    _opt(params, "readonly", readonly)
    _opt(params, "packed_ring", packed_ring)
    return params


# --------------------------------------------------------------------------------------------
# the client


class SpdkRpc:
    """JSON-RPC 2.0 over SPDK's unix socket; one connection, requests answered in turn.

    Connects on first use. Every call waits at most ``timeout_s`` for its answer; after a
    timeout or a broken connection the socket is closed (a late answer must not be taken for
    the next call's) and the next call reconnects.
    """

    def __init__(self, socket_path: Path = DEFAULT_RPC_SOCKET, *, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._next_id = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise HostError(
                f"cannot connect to the SPDK RPC socket {self.socket_path}: {exc.strerror or exc}",
                hint="is the SPDK target running? start it (spdk_tgt -r SOCKET -S DIR -m MASK) "
                "or point vmlab at the socket it was started with (-r)",
            ) from exc
        self._sock = sock
        self._buf = ""
        self._decoder.reset()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its ``result``; CommandError for an error answer."""
        self.connect()
        assert self._sock is not None
        self._next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params:
            request["params"] = dict(params)
        log.debug("SPDK RPC -> %s", request)
        deadline = time.monotonic() + self.timeout_s
        try:
            self._sock.settimeout(self.timeout_s)
            self._sock.sendall(json.dumps(request).encode())
            response = self._receive(self._next_id, deadline)
        except TimeoutError as exc:
            self.close()
            raise CommandError(
                f"SPDK RPC {method} got no answer within {self.timeout_s:g} s",
                argv=["spdk-rpc", method],
                returncode=None,
                output=self._partial(),
                hint=f"the target on {self.socket_path} is stuck or busy: read its log; "
                "a long-running call (an RBD connect) may need a longer RPC timeout",
            ) from exc
        except OSError as exc:
            self.close()
            raise CommandError(
                f"SPDK RPC {method}: connection to {self.socket_path} lost: {exc.strerror or exc}",
                argv=["spdk-rpc", method],
                returncode=None,
                output=self._partial(),
                hint="did the SPDK target exit? read its log",
            ) from exc
        log.debug("SPDK RPC <- %s", response)
        if "error" in response:
            raise _rpc_error(method, params or {}, response["error"])
        if "result" not in response:
            raise CommandError(
                f"SPDK RPC {method}: answer has neither result nor error",
                argv=["spdk-rpc", method],
                returncode=None,
                output=json.dumps(response),
                hint="is this socket an SPDK target's?",
            )
        return response["result"]

    def _partial(self) -> str:
        return f"partial answer: {self._buf[-500:]!r}" if self._buf.strip() else ""

    def _decode_one(self) -> dict[str, Any] | None:
        text = self._buf.lstrip()
        if not text:
            self._buf = ""
            return None
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except ValueError:  # incomplete so far: read on
            self._buf = text
            return None
        self._buf = text[end:]
        if not isinstance(obj, dict):
            raise ConnectionError(f"not a JSON-RPC response: {obj!r}")
        return obj

    def _receive(self, request_id: int, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            response = self._decode_one()
            if response is not None:
                if response.get("id") == request_id:
                    return response
                log.warning("SPDK RPC: skipping an answer to request %r", response.get("id"))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(_RECV_BYTES)
            if not chunk:
                raise ConnectionError(errno.ECONNRESET, "the target closed the connection")
            self._buf += self._decoder.decode(chunk)

    # -- typed methods ---------------------------------------------------------------------

    def spdk_get_version(self) -> SpdkVersion:
        result = self.call("spdk_get_version")
        fields = result.get("fields", {}) if isinstance(result, dict) else {}
        text = result.get("version", "") if isinstance(result, dict) else str(result)

        def number(key: str) -> int | None:
            value = fields.get(key)
            return value if isinstance(value, int) else None

        return SpdkVersion(str(text), number("major"), number("minor"), number("patch"))

    def framework_wait_init(self) -> None:
        """Returns once the target finished initializing; a no-op on releases without it."""
        try:
            self.call("framework_wait_init")
        except CommandError as exc:
            if exc.returncode != RPC_METHOD_NOT_FOUND:
                raise

    def framework_get_reactors(self) -> list[int]:
        """The cores (lcores) the target runs reactors on, sorted."""
        result = self.call("framework_get_reactors")
        reactors = result.get("reactors", []) if isinstance(result, dict) else []
        return sorted(int(r["lcore"]) for r in reactors)

    def core_mask(self) -> int:
        """The target's core mask (what it was started with ``-m``), from its reactors."""
        mask = 0
        for core in self.framework_get_reactors():
            mask |= 1 << core
        return mask

    def check_cpumask(self, cpumask: str | int) -> int:
        """HostError unless ``cpumask`` lies within the target's cores; returns it parsed."""
        requested = parse_cpumask(cpumask)
        target = self.core_mask()
        if requested & ~target:
            raise HostError(
                f"cpumask {_describe_mask(requested)} is not within the SPDK target's core "
                f"mask {_describe_mask(target)} ({self.socket_path})",
                hint=f"choose a cpumask within {format_cpumask(target)}, or start the target "
                f"with -m {format_cpumask(target | requested)}",
            )
        return requested

    def bdev_malloc_create(self, name: str, num_blocks: int, block_size: int) -> str:
        return str(
            self.call("bdev_malloc_create", malloc_create_params(name, num_blocks, block_size))
        )

    def bdev_malloc_delete(self, name: str) -> None:
        self.call("bdev_malloc_delete", {"name": name})

    def bdev_aio_create(
        self,
        filename: Path | str,
        name: str,
        block_size: int | None = None,
        *,
        readonly: bool = False,
    ) -> str:
        params = file_create_params(filename, name, block_size, readonly)
        return str(self.call("bdev_aio_create", params))

    def bdev_aio_delete(self, name: str) -> None:
        self.call("bdev_aio_delete", {"name": name})

    def bdev_uring_create(
        self, filename: Path | str, name: str, block_size: int | None = None
    ) -> str:
        return str(self.call("bdev_uring_create", file_create_params(filename, name, block_size)))

    def bdev_uring_delete(self, name: str) -> None:
        self.call("bdev_uring_delete", {"name": name})

    def bdev_rbd_register_cluster(
        self,
        name: str,
        *,
        user_id: str | None = None,
        config_file: Path | str | None = None,
        key_file: Path | str | None = None,
        config_param: Mapping[str, str] | None = None,
        core_mask: str | None = None,
    ) -> str:
        params = rbd_register_cluster_params(
            name,
            user_id=user_id,
            config_file=config_file,
            key_file=key_file,
            config_param=config_param,
            core_mask=core_mask,
        )
        return str(self.call("bdev_rbd_register_cluster", params))

    def bdev_rbd_unregister_cluster(self, name: str) -> None:
        self.call("bdev_rbd_unregister_cluster", {"name": name})

    def bdev_rbd_create(
        self,
        name: str,
        pool_name: str,
        rbd_name: str,
        block_size: int,
        *,
        cluster_name: str | None = None,
        user_id: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        params = rbd_create_params(
            name,
            pool_name,
            rbd_name,
            block_size,
            cluster_name=cluster_name,
            user_id=user_id,
            config=config,
        )
        return str(self.call("bdev_rbd_create", params))

    def bdev_rbd_delete(self, name: str) -> None:
        self.call("bdev_rbd_delete", {"name": name})

    def vhost_create_blk_controller(
        self,
        ctrlr: str,
        dev_name: str,
        *,
        cpumask: str | int | None = None,
        readonly: bool = False,
        packed_ring: bool = False,
    ) -> None:
        """Checks ``cpumask`` against the target's cores before anything is sent."""
        if cpumask is not None:
            self.check_cpumask(cpumask)
        params = blk_controller_params(
            ctrlr, dev_name, cpumask=cpumask, readonly=readonly, packed_ring=packed_ring
        )
        self.call("vhost_create_blk_controller", params)

    def vhost_get_controllers(self, name: str | None = None) -> list[VhostController]:
        result = self.call("vhost_get_controllers", {"name": name} if name else None)
        out: list[VhostController] = []
        for item in result if isinstance(result, list) else []:
            block = item.get("backend_specific", {}).get("block", {})
            sock = item.get("socket")
            out.append(
                VhostController(
                    ctrlr=str(item.get("ctrlr", "")),
                    cpumask=str(item.get("cpumask", "")),
                    socket=Path(sock) if isinstance(sock, str) and sock else None,
                    bdev=block.get("bdev") if isinstance(block, dict) else None,
                )
            )
        return out

    def vhost_delete_controller(self, ctrlr: str) -> None:
        self.call("vhost_delete_controller", {"ctrlr": ctrlr})


# --------------------------------------------------------------------------------------------
# backends and plans


@dataclass(frozen=True)
class AioBackend:
    """A file or host block device through Linux AIO (bdev_aio_create)."""

    filename: Path
    block_size: int | None = None  # None: SPDK detects it
    readonly: bool = False


@dataclass(frozen=True)
class UringBackend:
    """A file or host block device through io_uring (needs SPDK --with-uring)."""

    filename: Path
    block_size: int | None = None


@dataclass(frozen=True)
class MallocBackend:
    """A RAM disk inside the target: the ceiling of the vhost path itself."""

    size_mib: int
    block_size: int = 512


@dataclass(frozen=True)
class RbdBackend:
    """A Ceph RBD image through librbd inside the target (needs SPDK --with-rbd).

    Without ``cluster_name`` vmlab registers a cluster of its own for the disk (user, ceph.conf,
    keyring) and unregisters it afterwards; with it, the disk uses that registered cluster.
    """

    pool: str
    image: str
    user_id: str = "admin"  # Ceph id without "client."
    config_file: Path | None = None
    key_file: Path | None = None
    block_size: int = 512
    cluster_name: str | None = None


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


def render_plan(
    name: str,
    backend: SpdkBackend,
    *,
    cpumask: str | int | None = None,
    readonly: bool = False,
    packed_ring: bool = False,
) -> DiskPlan:
    """The RPC calls vmlab makes for one disk; pure, no SPDK needed."""
    check_name(name)
    ctrlr = controller_name(name)
    calls: list[RpcCall] = []
    match backend:
        case MallocBackend(size_mib=size_mib, block_size=block_size):
            if size_mib * _MIB % block_size:
                raise SpecError(
                    f"malloc disk {name}: {size_mib} MiB is not a multiple of {block_size}",
                    hint="use a power-of-two block size of 512 or more",
                )
            params = malloc_create_params(name, size_mib * _MIB // block_size, block_size)
            calls.append(RpcCall("bdev_malloc_create", params))
        case AioBackend(filename=filename, block_size=block_size, readonly=aio_ro):
            params = file_create_params(filename, name, block_size, aio_ro or readonly)
            calls.append(RpcCall("bdev_aio_create", params))
        case UringBackend(filename=filename, block_size=block_size):
            calls.append(
                RpcCall("bdev_uring_create", file_create_params(filename, name, block_size))
            )
        case RbdBackend():
            cluster = backend.cluster_name
            if cluster is None:
                cluster = f"vmlab.{name}.rados"
                register = rbd_register_cluster_params(
                    cluster,
                    user_id=backend.user_id,
                    config_file=backend.config_file,
                    key_file=backend.key_file,
                )
                calls.append(RpcCall("bdev_rbd_register_cluster", register))
            params = rbd_create_params(
                name, backend.pool, backend.image, backend.block_size, cluster_name=cluster
            )
            calls.append(RpcCall("bdev_rbd_create", params))
    controller = blk_controller_params(
        ctrlr, name, cpumask=cpumask, readonly=readonly, packed_ring=packed_ring
    )
    calls.append(RpcCall("vhost_create_blk_controller", controller))
    teardown = [u for c in reversed(calls) if (u := undo_call(c)) is not None]
    return DiskPlan(
        name=name,
        ctrlr=ctrlr,
        cpumask=controller.get("cpumask"),
        setup=tuple(calls),
        teardown=tuple(teardown),
    )


# --------------------------------------------------------------------------------------------
# QEMU side


def qemu_vhost_user_blk_args(
    socket_path: Path, *, id: str, num_queues: int | None = None
) -> list[str]:
    """``-chardev socket,id=ID-sock,path=S -device vhost-user-blk-pci,chardev=ID-sock,id=ID``.

    The guest's RAM must be shared with the target: ``-object memory-backend-memfd,id=mem,
    size=<-m>,share=on`` (SPDK prefers hugepages: add ``hugetlb=on``) and
    ``-machine ...,memory-backend=mem``.
    """
    chardev = f"{id}-sock"
    device = ["vhost-user-blk-pci", f"chardev={qemu_quote(chardev)}", f"id={qemu_quote(id)}"]
    if num_queues is not None:
        device.append(f"num-queues={num_queues}")
    return [
        "-chardev",
        f"socket,id={qemu_quote(chardev)},path={qemu_quote(socket_path)}",
        "-device",
        ",".join(device),
    ]


@dataclass(frozen=True)
class VhostDisk:
    """A disk the target serves: QEMU connects to ``socket``."""

    name: str
    ctrlr: str
    socket: Path

    def qemu_args(self, *, id: str, num_queues: int | None = None) -> list[str]:
        return qemu_vhost_user_blk_args(self.socket, id=id, num_queues=num_queues)


# --------------------------------------------------------------------------------------------
# the target


@dataclass(frozen=True)
class SpdkApp:
    """How vmlab starts an SPDK app itself: ``spdk_tgt`` or ``vhost`` (SPDK's build/bin/)."""

    binary: str
    cpumask: str = "0x1"
    mem_size_mib: int | None = None  # -s; None: SPDK takes what hugepages it finds
    extra_args: tuple[str, ...] = ()

    def argv(self, *, rpc_socket: Path, vhost_socket_dir: Path) -> list[str]:
        """``BINARY -r RPC_SOCKET -S VHOST_SOCKET_DIR -m MASK [-s MB] [EXTRA...]``."""
        argv = [
            self.binary,
            "-r",
            str(rpc_socket),
            "-S",
            str(vhost_socket_dir),
            "-m",
            format_cpumask(parse_cpumask(self.cpumask)),
        ]
        if self.mem_size_mib is not None:
            argv += ["-s", str(self.mem_size_mib)]
        return argv + list(self.extra_args)


def _check_socket_path(path: Path, what: str) -> None:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise HostError(
            f"{what} {path} is longer than {UNIX_PATH_MAX} bytes, the limit of a unix socket",
            hint="use a shorter directory (VMLAB_RUNTIME, or the target's -S)",
        )


class SpdkTarget:
    """An SPDK target vmlab attached to or started, and the disks it created on it.

    Use :meth:`attach` or :meth:`spawn`, then ``with target: disk = target.add_disk(plan)``.
    On exit (also on exceptions and KeyboardInterrupt) the controllers, bdevs and clusters it
    created are deleted newest first; a target it started is stopped with SIGINT, then SIGKILL.
    """

    def __init__(
        self,
        *,
        rpc_socket: Path | None,
        vhost_socket_dir: Path | None,
        app: SpdkApp | None,
        log_path: Path | None,
        runtime_root: Path | None,
        ready_timeout_s: float,
        rpc_timeout_s: float,
        stop_timeout_s: float,
    ) -> None:
        self._rpc_socket = rpc_socket
        self.vhost_socket_dir = vhost_socket_dir
        self.app = app
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.rpc: SpdkRpc | None = None
        self.version: SpdkVersion | None = None
        self.disks: list[VhostDisk] = []
        self._runtime_root = runtime_root
        self._private_dir: Path | None = None
        self._undo: list[RpcCall] = []

    @property
    def rpc_socket(self) -> Path:
        """The target's RPC socket (for a spawned target: known once it was started)."""
        if self._rpc_socket is None:
            raise LaunchError("the SPDK target was not started", hint="use it inside `with`")
        return self._rpc_socket

    @classmethod
    def attach(
        cls,
        rpc_socket: Path = DEFAULT_RPC_SOCKET,
        *,
        vhost_socket_dir: Path | None = None,
        ready_timeout_s: float = 5.0,
        rpc_timeout_s: float = 30.0,
    ) -> SpdkTarget:
        """A target someone else runs; ``vhost_socket_dir`` (its -S) is only needed for SPDK
        releases whose vhost_get_controllers does not report the socket."""
        return cls(
            rpc_socket=rpc_socket,
            vhost_socket_dir=vhost_socket_dir,
            app=None,
            log_path=None,
            runtime_root=None,
            ready_timeout_s=ready_timeout_s,
            rpc_timeout_s=rpc_timeout_s,
            stop_timeout_s=0.0,
        )

    @classmethod
    def spawn(
        cls,
        app: SpdkApp,
        *,
        log_path: Path,
        runtime_root: Path | None = None,
        ready_timeout_s: float = 30.0,
        rpc_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> SpdkTarget:
        """A target vmlab starts, with its RPC and vhost sockets in a private directory
        (``rpc.sock`` and the controllers' sockets in ``runtime_root``/spdk-XXXX, made on
        enter and removed on exit)."""
        return cls(
            rpc_socket=None,
            vhost_socket_dir=None,
            app=app,
            log_path=log_path,
            runtime_root=runtime_root,
            ready_timeout_s=ready_timeout_s,
            rpc_timeout_s=rpc_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )

    # -- start -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.app is not None:
            self._spawn(self.app)
        self._wait_ready()
        assert self.rpc is not None
        self.rpc.framework_wait_init()
        log.info(
            "SPDK target on %s: %s", self.rpc_socket, self.version.text if self.version else ""
        )

    def _spawn(self, app: SpdkApp) -> None:
        assert self.log_path is not None
        root = self._runtime_root or runtime_dir()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._private_dir = Path(tempfile.mkdtemp(prefix="spdk-", dir=root))
        self._rpc_socket = self._private_dir / "rpc.sock"
        self.vhost_socket_dir = self._private_dir
        _check_socket_path(self.rpc_socket, "the SPDK RPC socket")
        argv = app.argv(rpc_socket=self.rpc_socket, vhost_socket_dir=self.vhost_socket_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.debug("starting %s", " ".join(argv))
        with self.log_path.open("ab") as out:
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
                )
            except OSError as exc:
                raise LaunchError(
                    f"cannot run the SPDK app {app.binary}: {exc.strerror or exc}",
                    hint="build SPDK (https://spdk.io/doc/getting_started.html) and name its "
                    "build/bin/spdk_tgt or build/bin/vhost",
                ) from exc

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return "; ".join(lines)

    def _wait_ready(self) -> None:
        """Until ``spdk_get_version`` answers, the process exits, or the deadline passes."""
        deadline = time.monotonic() + self.ready_timeout_s
        last_error = "the socket never appeared"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                binary = self.app.binary if self.app else "?"
                raise LaunchError(
                    f"SPDK app {binary} exited with status {self.proc.returncode} "
                    f"before its RPC socket answered: {self._log_tail() or 'no output'}",
                    log=self.log_path,
                    hint="SPDK needs hugepages (HUGEMEM=2048 scripts/setup.sh) and usually root",
                )
            if self.rpc_socket.exists():
                remaining = max(0.05, deadline - time.monotonic())
                probe = SpdkRpc(self.rpc_socket, timeout_s=min(self.rpc_timeout_s, remaining))
                try:
                    self.version = probe.spdk_get_version()
                except (HostError, CommandError) as exc:
                    probe.close()
                    last_error = str(exc)
                else:
                    probe.timeout_s = self.rpc_timeout_s
                    self.rpc = probe
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if self.proc is None:
            raise HostError(
                f"no SPDK target answers on {self.rpc_socket} within "
                f"{self.ready_timeout_s:g} s: {last_error}",
                hint="start one (spdk_tgt -r SOCKET -S DIR -m MASK) or fix the socket path; "
                "or name the SPDK binary so vmlab starts it",
            )
        raise LaunchError(
            f"SPDK app {self.app.binary if self.app else ''} did not answer on "
            f"{self.rpc_socket} within {self.ready_timeout_s:g} s: {last_error}",
            log=self.log_path,
            hint="read its log: SPDK needs hugepages (HUGEMEM=2048 scripts/setup.sh) and "
            "usually root; a slow host may need a longer deadline",
        )

    # -- disks -----------------------------------------------------------------------------

    def add_disk(self, plan: DiskPlan) -> VhostDisk:
        """Run ``plan.setup``; every object created is deleted again on exit."""
        if self.rpc is None:
            raise LaunchError("the SPDK target is not running", hint="use it inside `with`")
        if plan.cpumask is not None:
            self.rpc.check_cpumask(plan.cpumask)  # before anything is created
        for call in plan.setup:
            result = self.rpc.call(call.method, call.params)
            undo = undo_call(call, result)
            if undo is not None:
                self._undo.append(undo)
        disk = VhostDisk(plan.name, plan.ctrlr, self._socket_of(plan.ctrlr))
        self.disks.append(disk)
        return disk

    def _socket_of(self, ctrlr: str) -> Path:
        assert self.rpc is not None
        found = [c for c in self.rpc.vhost_get_controllers(ctrlr) if c.ctrlr == ctrlr]
        if found and found[0].socket is not None:
            path = found[0].socket
        elif self.vhost_socket_dir is not None:
            path = self.vhost_socket_dir / ctrlr
        else:
            raise HostError(
                f"the SPDK target does not say where the socket of {ctrlr} is",
                hint="give vmlab the target's vhost socket directory (its -S option)",
            )
        _check_socket_path(path, f"the vhost-user socket of {ctrlr}")
        return path

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        try:
            self._delete_created()
        finally:
            try:
                self._stop_process()
            finally:
                if self.rpc is not None:
                    self.rpc.close()
                    self.rpc = None
                if self._private_dir is not None:
                    shutil.rmtree(self._private_dir, ignore_errors=True)

    def _delete_created(self) -> None:
        undo, self._undo = self._undo, []
        if not undo:
            return
        if self.rpc is None or (self.proc is not None and self.proc.poll() is not None):
            log.warning("SPDK target is gone; not deleting %d objects", len(undo))
            return
        failed: list[str] = []
        for i, call in enumerate(reversed(undo)):
            try:
                self.rpc.call(call.method, call.params)
            except (CommandError, HostError) as exc:
                log.error("SPDK cleanup %s failed: %s", call, exc)
                failed.append(str(call))
                if not isinstance(exc, CommandError) or exc.returncode is None:
                    # no answer or no connection: the target is stuck or gone
                    failed += [str(c) for c in list(reversed(undo))[i + 1 :]]
                    break
        if failed and self.proc is None:  # a shared target keeps them
            log.error(
                "left on the SPDK target %s (delete them with scripts/rpc.py -s %s): %s",
                self.rpc_socket,
                self.rpc_socket,
                "; ".join(failed),
            )

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # its own session: children go too

    def _stop_process(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGINT)  # SPDK's clean shutdown
        try:
            self.proc.wait(timeout=self.stop_timeout_s)
            return
        except subprocess.TimeoutExpired:
            log.warning(
                "SPDK app %d ignored SIGINT for %g s; killing it",
                self.proc.pid,
                self.stop_timeout_s,
            )
        self._signal(signal.SIGKILL)
        self.proc.wait()
