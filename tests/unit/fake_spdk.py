"""A stand-in for an SPDK target's JSON-RPC server, for what a real target does not show:
error answers on demand, a silent target, releases older or newer than the v23.01.1 the
integration tests run (tests/integration/test_spdk_target.py covers everything else, for real).

It mimics what vmlab depends on, as SPDK's lib/jsonrpc and doc/jsonrpc.md describe it:
- framing: one JSON object per request on a unix stream socket; answers are JSON objects,
  here optionally sent in tiny chunks (``split=True``);
- strict parameter decoding: an unknown or missing parameter name is ``-32603
  spdk_json_decode_object failed`` (what v23.01.1 answers), an unknown method ``-32601 Method
  not found``;
- errors as negative errno with strerror text (``-17 File exists``, ``-19 No such device``);
- state: bdevs, registered RBD clusters, vhost-blk controllers (socket ``<-S dir>/<ctrlr>``),
  reactors on the cores of its mask. Stricter than SPDK in one way: deleting a bdev or a
  cluster that is still in use is ``-16 Device or resource busy``, so cleanup order shows.

Use it in-process: ``with FakeSpdk(path) as fake``. ``socket_field=False`` answers
vhost_get_controllers as releases before its ``socket`` field did; ``no_wait_init`` is a
release without framework_wait_init.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VERSION = "SPDK v24.01 git sha1 fake \u2014 vmlab"

# method -> (required parameter names, optional parameter names), from SPDK's rpc/*.py
METHODS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "spdk_get_version": (frozenset(), frozenset()),
    "framework_wait_init": (frozenset(), frozenset()),
    "framework_get_reactors": (frozenset(), frozenset()),
    "bdev_malloc_create": (
        frozenset({"num_blocks", "block_size"}),
        frozenset({"name", "uuid", "optimal_io_boundary", "md_size", "md_interleave"}),
    ),
    "bdev_malloc_delete": (frozenset({"name"}), frozenset()),
    "bdev_aio_create": (frozenset({"filename", "name"}), frozenset({"block_size", "readonly"})),
    "bdev_aio_delete": (frozenset({"name"}), frozenset()),
    "bdev_uring_create": (frozenset({"filename", "name"}), frozenset({"block_size", "uuid"})),
    "bdev_uring_delete": (frozenset({"name"}), frozenset()),
    "bdev_rbd_register_cluster": (
        frozenset({"name"}),
        frozenset({"user_id", "config_param", "config_file", "key_file", "core_mask"}),
    ),
    "bdev_rbd_unregister_cluster": (frozenset({"name"}), frozenset()),
    "bdev_rbd_create": (
        frozenset({"pool_name", "rbd_name", "block_size"}),
        frozenset({"name", "user_id", "config", "cluster_name", "uuid"}),
    ),
    "bdev_rbd_delete": (frozenset({"name"}), frozenset()),
    "vhost_create_blk_controller": (
        frozenset({"ctrlr", "dev_name"}),
        frozenset({"cpumask", "transport", "readonly", "packed_ring"}),
    ),
    "vhost_get_controllers": (frozenset(), frozenset({"name"})),
    "vhost_delete_controller": (frozenset({"ctrlr"}), frozenset()),
}


class RpcFailure(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or os.strerror(-code))
        self.code = code
        self.message = message or os.strerror(-code)


def _mask(text: str) -> int:
    return int(text.removeprefix("0x"), 16)


class FakeSpdk:
    """A threaded JSON-RPC server on ``socket_path``.

    ``silent``: accept, read and record, never answer. ``fail``: method -> (code, message),
    answered as an error. ``calls`` records every request as (method, params), in order.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        cores: Iterable[int] = (0, 1),
        vhost_dir: Path | None = None,
        split: bool = False,
        silent: bool = False,
        fail: dict[str, tuple[int, str]] | None = None,
        socket_field: bool = True,
        no_wait_init: bool = False,
    ) -> None:
        self.socket_path = socket_path
        self.cores = sorted(cores)
        self.vhost_dir = vhost_dir or socket_path.parent
        self.split = split
        self.silent = silent
        self.fail = dict(fail or {})
        if no_wait_init:
            self.fail["framework_wait_init"] = (-32601, "Method not found")
        self.socket_field = socket_field
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.bdevs: dict[str, str] = {}  # name -> kind
        self.clusters: set[str] = set()
        self.rbd_cluster: dict[str, str] = {}  # rbd bdev -> cluster
        self.controllers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    # -- lifecycle

    def __enter__(self) -> FakeSpdk:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(8)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        if self._listener is not None:
            self._listener.close()
        self.socket_path.unlink(missing_ok=True)

    @property
    def methods_called(self) -> list[str]:
        return [m for m, _ in self.calls]

    # -- serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            conn, _ = self._listener.accept()
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        buf = ""
        decoder = json.JSONDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([conn], [], [], 0.05)
            if not ready:
                continue
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data.decode()
            while buf.strip():
                try:
                    request, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                response = self.handle(request)
                if not self.silent:
                    self._send(conn, response)

    def _send(self, conn: socket.socket, response: dict[str, Any]) -> None:
        data = (json.dumps(response, ensure_ascii=False) + "\n").encode()
        try:
            if not self.split:
                conn.sendall(data)
                return
            for i in range(0, len(data), 7):  # cuts through multi-byte characters too
                conn.sendall(data[i : i + 7])
                time.sleep(0.001)
        except OSError:
            pass

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        method = str(request.get("method"))
        params = request.get("params") or {}
        with self._lock:
            self.calls.append((method, params))
            try:
                result = self._dispatch(method, params)
            except RpcFailure as exc:
                error = {"code": exc.code, "message": exc.message}
                return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
        return {"jsonrpc": "2.0", "id": request.get("id"), "result": result}

    # -- methods

    def _dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method not in METHODS:
            raise RpcFailure(-32601, "Method not found")
        required, optional = METHODS[method]
        names = set(params)
        if not required <= names or names - required - optional:
            raise RpcFailure(-32603, "spdk_json_decode_object failed")  # as v23.01 answers
        if method in self.fail:
            code, message = self.fail[method]
            raise RpcFailure(code, message)
        handler = getattr(self, "_" + method)
        return handler(**params)

    def _spdk_get_version(self) -> dict[str, Any]:
        fields = {"major": 24, "minor": 1, "patch": 0, "suffix": "", "commit": "fake"}
        return {"version": VERSION, "fields": fields}

    def _framework_wait_init(self) -> bool:
        return True

    def _framework_get_reactors(self) -> dict[str, Any]:
        reactors = [
            {"lcore": core, "busy": 0, "idle": 0, "irq": 0, "sys": 0, "usr": 0, "lw_threads": []}
            for core in self.cores
        ]
        return {"tick_rate": 2400000000, "pid": os.getpid(), "reactors": reactors}

    def _new_bdev(self, name: str, kind: str) -> str:
        if name in self.bdevs:
            raise RpcFailure(-errno.EEXIST)
        self.bdevs[name] = kind
        return name

    def _delete_bdev(self, name: str, kind: str) -> bool:
        if self.bdevs.get(name) != kind:
            raise RpcFailure(-errno.ENODEV)
        if any(c["bdev"] == name for c in self.controllers.values()):
            raise RpcFailure(-errno.EBUSY)
        del self.bdevs[name]
        self.rbd_cluster.pop(name, None)
        return True

    def _bdev_malloc_create(
        self, num_blocks: int, block_size: int, name: str = "Malloc0", **_: Any
    ) -> str:
        if block_size < 512 or block_size & (block_size - 1) or num_blocks <= 0:
            raise RpcFailure(-errno.EINVAL)
        return self._new_bdev(name, "malloc")

    def _bdev_malloc_delete(self, name: str) -> bool:
        return self._delete_bdev(name, "malloc")

    def _bdev_aio_create(self, filename: str, name: str, **_: Any) -> str:
        if not Path(filename).exists():
            raise RpcFailure(-errno.ENOENT)
        return self._new_bdev(name, "aio")

    def _bdev_aio_delete(self, name: str) -> bool:
        return self._delete_bdev(name, "aio")

    def _bdev_uring_create(self, filename: str, name: str, **_: Any) -> str:
        if not Path(filename).exists():
            raise RpcFailure(-errno.ENOENT)
        return self._new_bdev(name, "uring")

    def _bdev_uring_delete(self, name: str) -> bool:
        return self._delete_bdev(name, "uring")

    def _bdev_rbd_register_cluster(self, name: str, **_: Any) -> str:
        if name in self.clusters:
            raise RpcFailure(-errno.EEXIST)
        self.clusters.add(name)
        return name

    def _bdev_rbd_unregister_cluster(self, name: str) -> bool:
        if name not in self.clusters:
            raise RpcFailure(-errno.ENODEV)
        if name in self.rbd_cluster.values():
            raise RpcFailure(-errno.EBUSY)
        self.clusters.remove(name)
        return True

    def _bdev_rbd_create(
        self, pool_name: str, rbd_name: str, block_size: int, name: str = "Ceph0", **kw: Any
    ) -> str:
        cluster = kw.get("cluster_name")
        if cluster is not None and cluster not in self.clusters:
            raise RpcFailure(-errno.EINVAL)
        created = self._new_bdev(name, "rbd")
        if cluster is not None:
            self.rbd_cluster[name] = cluster
        return created

    def _bdev_rbd_delete(self, name: str) -> bool:
        return self._delete_bdev(name, "rbd")

    def _vhost_create_blk_controller(
        self, ctrlr: str, dev_name: str, cpumask: str | None = None, **_: Any
    ) -> bool:
        if ctrlr in self.controllers:
            raise RpcFailure(-errno.EEXIST)
        if dev_name not in self.bdevs:
            raise RpcFailure(-errno.ENODEV)
        app_mask = sum(1 << c for c in self.cores)
        mask = _mask(cpumask) if cpumask else app_mask
        if mask & ~app_mask:
            raise RpcFailure(-errno.EINVAL)
        self.controllers[ctrlr] = {"bdev": dev_name, "cpumask": f"0x{mask:x}"}
        return True

    def _vhost_get_controllers(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None and name not in self.controllers:
            raise RpcFailure(-errno.ENODEV)
        answers = [
            {
                "ctrlr": ctrlr,
                "cpumask": info["cpumask"],
                "delay_base_us": 0,
                "iops_threshold": 60000,
                "socket": str(self.vhost_dir / ctrlr),
                "sessions": [],
                "backend_specific": {"block": {"readonly": False, "bdev": info["bdev"]}},
            }
            for ctrlr, info in sorted(self.controllers.items())
            if name is None or ctrlr == name
        ]
        if not self.socket_field:
            for answer in answers:
                del answer["socket"]
        return answers

    def _vhost_delete_controller(self, ctrlr: str) -> bool:
        if ctrlr not in self.controllers:
            raise RpcFailure(-errno.ENODEV)
        del self.controllers[ctrlr]
        return True
