"""Network namespaces vmlab creates for a bench, and the `ip` commands that build them.

A :class:`Netns` is a context manager: ``ip netns add`` on enter (loopback up), and on exit
every process still inside is stopped and the namespace deleted. Before the namespace exists a
state file under ``<runtime_dir>/netns/`` records who owns it, so :func:`sweep_stale` can remove
the namespaces of a vmlab that died without cleaning up.

:func:`call_in_netns` runs a Python function with its thread switched into a namespace (the
way to open ``/dev/net/tun`` for a tap that lives in a lab namespace while QEMU stays in the
host's): ``setns(CLONE_NEWNET)`` changes only the calling thread, so a short helper thread
enters, works and leaves, and the rest of the process never changes namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from vmlab.errors import CommandError, HostError
from vmlab.paths import runtime_dir
from vmlab.proc import Completed
from vmlab.proc import run as run_command

log = logging.getLogger(__name__)

PREFIX = "vmlab-"
NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 3.0
NAME_RE = re.compile(r"^vmlab-[a-z0-9-]{1,40}$")
HOST_SIDE_PREFIXES = ("lb", "lh", "lm")  # a lab's host-side ports (vmlab.net.lab, for libvirt)


def host_side_name(prefix: str, netns: str) -> str:
    """``lb-<id>`` for namespace ``vmlab-<id>``: a link in the host namespace that belongs to
    that lab (at most 15 characters, the kernel's limit)."""
    return f"{prefix}-{netns.removeprefix(PREFIX)}"[:15]


T = TypeVar("T")


# --- running ip ------------------------------------------------------------------------------


def require_ip() -> str:
    path = shutil.which("ip")
    if path is None:
        raise HostError("the `ip` command is missing", hint="apt-get install iproute2")
    return path


def run(
    argv: Sequence[str],
    *,
    timeout_s: float = IP_TIMEOUT_S,
    check: bool = True,
    what: str | None = None,
) -> Completed:
    """A short network command (``ip``, ``cat`` in a namespace); CommandError if it fails."""
    return run_command(
        argv,
        timeout_s=timeout_s,
        check=check,
        what=what,
        missing_hint="apt-get install iproute2",
        hint="network setup needs root (CAP_NET_ADMIN) and iproute2",
    )


def ip_argv(netns: str | None, *args: str) -> list[str]:
    """``ip [-n NS] ARGS...``: an ip command in a namespace, or the host's when netns is None."""
    return ["ip", *(["-n", netns] if netns else []), *args]


# --- owner records and liveness --------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone or a
    zombie: a pid alone can be reused, pid + start time cannot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 here may never reap it)."""
    return _proc_start(pid) is not None


@dataclass(frozen=True)
class Owner:
    pid: int
    start: str

    @classmethod
    def me(cls) -> Owner:
        start = _proc_start(os.getpid())
        assert start is not None
        return cls(os.getpid(), start)

    def alive(self) -> bool:
        return _proc_start(self.pid) == self.start


def state_root(root: Path | None = None) -> Path:
    return (root or runtime_dir()) / "netns"


def new_name() -> str:
    """``vmlab-`` and 8 random hex digits: unique among concurrent benches."""
    return f"{PREFIX}{secrets.token_hex(4)}"


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (``ip netns pids``)."""
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in proc.out.split() if tok.isdigit()]


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    return left


def stop_processes(name: str, *, timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM every process inside the namespace, SIGKILL what is left; returns their pids."""
    pids = [p for p in pids_in(name) if p != os.getpid()]
    if not pids:
        return []
    log.info("stopping %d process(es) still in namespace %s: %s", len(pids), name, pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = _wait_gone(pids, timeout_s)
        if not pids:
            break
    if pids:
        log.warning("processes %s in namespace %s survived SIGKILL", pids, name)
    return pids


def delete(name: str) -> None:
    """Stop what runs inside, then ``ip netns del``; a namespace already gone is fine."""
    if not exists(name):
        return
    stop_processes(name)
    proc = run(["ip", "netns", "del", name], check=False)
    if proc.returncode != 0 and exists(name):
        raise CommandError(
            f"cannot delete network namespace {name}",
            argv=["ip", "netns", "del", name],
            returncode=proc.returncode,
            output=proc.err,
            hint=f"run `ip netns pids {name}` and stop what is still inside",
        )


# --- the namespace ---------------------------------------------------------------------------


class Netns:
    """A network namespace for the duration of a ``with`` block.

    ``name`` must start with ``vmlab-`` (so a sweep never touches anyone else's namespace);
    left out, a unique one is chosen.
    """

    def __init__(self, name: str | None = None, *, state: Path | None = None) -> None:
        self.name = name or new_name()
        if not NAME_RE.match(self.name):
            raise ValueError(f"namespace name {self.name!r} must match {NAME_RE.pattern}")
        self.state_file = state_root(state) / f"{self.name}.json"
        self.created = False

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    @property
    def path(self) -> Path:
        """The bind mount that keeps the namespace alive; open it for setns(2)."""
        return NETNS_RUN_DIR / self.name

    def __enter__(self) -> Self:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        require_ip()
        if exists(self.name):
            raise HostError(
                f"network namespace {self.name} already exists",
                hint=f"another vmlab uses it; if none runs: ip netns del {self.name}",
            )
        owner = Owner.me()
        self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The record comes first: a crash between the two steps leaves a record, not an orphan.
        self.state_file.write_text(
            json.dumps({"name": self.name, "owner_pid": owner.pid, "owner_start": owner.start})
        )
        self.created = True
        run(["ip", "netns", "add", self.name], what=f"creating namespace {self.name}")
        run(self.ip("link", "set", "lo", "up"))
        log.debug("namespace %s created", self.name)

    def close(self) -> None:
        if not self.created:
            return
        try:
            delete(self.name)
        finally:
            self.state_file.unlink(missing_ok=True)
            self.created = False
        log.debug("namespace %s deleted", self.name)

    # -- commands inside ---------------------------------------------------------------------
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec NAME ...``; needs root)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def ip(self, *args: str) -> list[str]:
        """``ip -n NAME ARGS...``."""
        return ip_argv(self.name, *args)

    def run(
        self, argv: Sequence[str], *, timeout_s: float = IP_TIMEOUT_S, check: bool = True
    ) -> Completed:
        return run(self.exec_argv(argv), timeout_s=timeout_s, check=check)

    def pids(self) -> list[int]:
        return pids_in(self.name)


def sweep_stale(root: Path | None = None) -> list[str]:
    """Delete the namespaces (and stop their processes) of vmlab processes that died.

    Only namespaces with a state record under ``root`` (default: the runtime dir) are touched,
    and only when the recorded owner (pid and start time) is gone. Returns the names deleted.
    """
    removed: list[str] = []
    folder = state_root(root)
    if not folder.is_dir():
        return removed
    for record in sorted(folder.glob(f"{PREFIX}*.json")):
        try:
            data = json.loads(record.read_text())
            owner = Owner(int(data["owner_pid"]), str(data["owner_start"]))
            name = str(data["name"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable namespace record %s", record)
            continue
        if owner.alive() or not NAME_RE.match(name):
            continue
        if exists(name):
            log.warning("deleting namespace %s left by dead vmlab process %d", name, owner.pid)
            delete(name)
            removed.append(name)
        # Its host-side ports: veths died with the namespace, a bridge did not.
        for prefix in HOST_SIDE_PREFIXES:
            run(ip_argv(None, "link", "del", "dev", host_side_name(prefix, name)), check=False)
        record.unlink(missing_ok=True)
    return removed


# --- running Python code inside a namespace --------------------------------------------------


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def call_in_netns(netns: str, fn: Callable[[], T], *, timeout_s: float = 10.0) -> T:
    """Run ``fn()`` in a helper thread switched into namespace ``netns``; returns its result.

    Sockets and ``/dev/net/tun`` files opened by ``fn`` belong to that namespace and stay so
    after the thread ends. File descriptors are per process, so ``fn`` may return them.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            error.append(exc)
            return
        try:
            target = os.open(NETNS_RUN_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                result.append(fn())
            finally:
                _setns(own)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, re-raised
            error.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise HostError(f"work inside namespace {netns} did not finish within {timeout_s:.0f} s")
    if error:
        exc = error[0]
        if isinstance(exc, FileNotFoundError) and not exists(netns):
            raise HostError(f"network namespace {netns} does not exist") from exc
        if isinstance(exc, PermissionError):
            raise HostError(
                f"cannot enter network namespace {netns}: {exc}",
                hint="entering a namespace needs root (CAP_SYS_ADMIN)",
            ) from exc
        raise exc
    return result[0]
