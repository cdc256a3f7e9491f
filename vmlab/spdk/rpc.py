"""Talking to an SPDK target: SPDK's own JSON-RPC client (``spdk.rpc.client.JSONRPCClient``,
the ``spdk`` package on PyPI, which is SPDK's ``python/spdk``) behind a small typed adapter.

The adapter does what SPDK's client leaves to its caller, measured against a v23.01.1 target:

- errors come as one ``JSONRPCException`` whose text embeds the JSON-RPC error object; the
  adapter reads the code back out of it, so a failure becomes a :class:`CommandError` with the
  code and a hint (a build without ``--with-rbd``, an object left by an earlier run, ...);
- a target that died mid-call surfaces as a raw ``OSError`` (``BrokenPipeError``), a refused
  connect as ``JSONRPCException``: both become vmlab errors that say the target is gone;
- answers are not matched to requests by id, so after a timeout the connection is closed
  (a late answer must not be taken for the next call's) and the next call reconnects;
- every client adds a stderr ``StreamHandler`` to a logger named after the socket; the adapter
  removes it, so SPDK's client logs through vmlab's logging like everything else;
- on an error answer the client writes ``method`` and ``req_id`` into the params dict it was
  given: it only ever gets a copy.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from spdk.rpc.client import JSONRPCClient, JSONRPCException

from vmlab.errors import CommandError, HostError
from vmlab.spdk.cpumask import describe_mask, format_cpumask, parse_cpumask

log = logging.getLogger(__name__)

# JSON-RPC 2.0 codes SPDK uses; other errors carry a negative errno.
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603  # v23.01: also what an unknown parameter name gets

# What a build lacks when the target does not know a method.
_BUILD_HINTS = {
    "bdev_rbd_": "SPDK built with `./configure --with-rbd`",
    "bdev_uring_": "SPDK built with `./configure --with-uring`",
    "vhost_": "an SPDK app with vhost: vhost or spdk_tgt (build/bin/)",
}


@dataclass(frozen=True)
class SpdkVersion:
    text: str  # "SPDK v23.01.1"
    major: int | None = None
    minor: int | None = None
    patch: int | None = None


def _error_object(message: str) -> dict[str, Any] | None:
    """The JSON-RPC error object SPDK's client put at the end of its exception text."""
    _, found, tail = message.rpartition("response:\n")
    if not found:
        return None
    try:
        obj = json.loads(tail)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def rpc_error(method: str, params: Mapping[str, Any], error: Mapping[str, Any]) -> CommandError:
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, int) else None
    message = str(error.get("message", error))
    if code == RPC_METHOD_NOT_FOUND:
        needs = next((v for k, v in _BUILD_HINTS.items() if method.startswith(k)), None)
        hint = f"this SPDK target does not know {method}" + (f": it needs {needs}" if needs else "")
    elif code == RPC_INVALID_PARAMS or "json_decode" in message:
        hint = (
            f"the target rejected the parameters of {method}: compare them with "
            f"`rpc.py {method} -h` of this SPDK version, and read the target's log"
        )
    elif method == "bdev_uring_create" and code == RPC_INTERNAL_ERROR:
        hint = (
            "SPDK 23.01 built --with-uring also probes zoned-device sysfs and so refuses a "
            "regular file (the target's log: 'Unable to open file .../queue/zoned'): serve "
            "files with aio (leave disk.aio at threads or native), or build --without-uring-zns"
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


class SpdkRpc:
    """JSON-RPC to one SPDK target's unix socket; connects on first use.

    Every call waits at most ``timeout_s`` for its answer (SPDK's client measures it per
    ``recv``)."""

    def __init__(self, socket_path: Path, *, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._client: JSONRPCClient | None = None

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
        if self._client is not None:
            return
        try:
            client = JSONRPCClient(str(self.socket_path), timeout=self.timeout_s)
        except JSONRPCException as exc:
            raise HostError(
                f"cannot connect to the SPDK RPC socket {self.socket_path}: "
                f"{str(exc.__cause__ or exc.message).strip()}",
                hint="is the SPDK target running? start it (vhost -r SOCKET -S DIR -m MASK) or "
                "point vmlab at the socket it was started with (-r)",
            ) from exc
        finally:
            logger = logging.getLogger(f"JSONRPCClient({self.socket_path})")
            logger.handlers.clear()  # its own stderr handler: log through vmlab's instead
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except OSError as exc:  # shutdown() on a socket whose peer is gone
                log.debug("closing the SPDK RPC connection: %s", exc)

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its ``result``; CommandError for an error answer, for
        no answer within ``timeout_s`` and for a connection that broke."""
        self.connect()
        assert self._client is not None
        sent = dict(params or {})
        log.debug("SPDK RPC -> %s %s", method, sent)
        try:
            result = self._client.call(method, dict(sent))  # it scribbles on what it gets
        except JSONRPCException as exc:
            error = _error_object(exc.message)
            if error is not None:
                raise rpc_error(method, sent, error) from exc
            self.close()
            timed_out = exc.message.startswith("Timeout")
            raise CommandError(
                f"SPDK RPC {method} got no answer within {self.timeout_s:g} s"
                if timed_out
                else f"SPDK RPC {method}: the target closed the connection",
                argv=["spdk-rpc", method],
                returncode=None,
                output=exc.message.strip()[-500:],
                hint=f"the target on {self.socket_path} is stuck or busy: read its log; a "
                "long-running call (an RBD connect) may need a longer RPC timeout"
                if timed_out
                else "did the SPDK target exit? read its log",
            ) from exc
        except OSError as exc:
            self.close()
            raise CommandError(
                f"SPDK RPC {method}: connection to {self.socket_path} lost: {exc.strerror or exc}",
                argv=["spdk-rpc", method],
                returncode=None,
                hint="did the SPDK target exit? read its log",
            ) from exc
        log.debug("SPDK RPC <- %s", result)
        return result

    # -- what vmlab asks of every target ---------------------------------------------------

    def version(self) -> SpdkVersion:
        result = self.call("spdk_get_version")
        fields = result.get("fields", {}) if isinstance(result, dict) else {}
        text = result.get("version", "") if isinstance(result, dict) else str(result)

        def number(key: str) -> int | None:
            value = fields.get(key)
            return value if isinstance(value, int) else None

        return SpdkVersion(str(text), number("major"), number("minor"), number("patch"))

    def wait_init(self) -> None:
        """Returns once the target finished initializing; a no-op on releases without it."""
        try:
            self.call("framework_wait_init")
        except CommandError as exc:
            if exc.returncode != RPC_METHOD_NOT_FOUND:
                raise

    def core_mask(self) -> int:
        """The target's core mask (what it was started with ``-m``), from its reactors."""
        result = self.call("framework_get_reactors")
        reactors = result.get("reactors", []) if isinstance(result, dict) else []
        mask = 0
        for reactor in reactors:
            mask |= 1 << int(reactor["lcore"])
        return mask

    def check_cpumask(self, cpumask: str | int) -> int:
        """HostError unless ``cpumask`` lies within the target's cores; returns it parsed."""
        requested = parse_cpumask(cpumask)
        target = self.core_mask()
        if requested & ~target:
            raise HostError(
                f"cpumask {describe_mask(requested)} is not within the SPDK target's core "
                f"mask {describe_mask(target)} ({self.socket_path})",
                hint=f"choose a cpumask within {format_cpumask(target)}, or start the target "
                f"with -m {format_cpumask(target | requested)}",
            )
        return requested

    def controller_socket(self, ctrlr: str) -> Path | None:
        """Where the vhost-user socket of ``ctrlr`` is, if the target says (releases before
        the ``socket`` field of vhost_get_controllers do not)."""
        result = self.call("vhost_get_controllers", {"name": ctrlr})
        for item in result if isinstance(result, list) else []:
            sock = item.get("socket") if isinstance(item, dict) else None
            if item.get("ctrlr") == ctrlr and isinstance(sock, str) and sock:
                return Path(sock)
        return None
