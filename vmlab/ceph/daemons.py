"""The micro cluster's daemons (ceph-mon, ceph-mgr, ceph-osd): start, stop, watch.

Daemons daemonize themselves and write pidfiles; so once ``up`` returns they are children of
PID 1, which on some hosts (containers, micro VMs) reaps nothing: a killed daemon stays as a
zombie. Liveness is therefore judged by ``/proc/PID/stat`` (state ``Z`` is dead), by the command
line naming our ceph.conf, and by the daemon's admin socket answering -- never by the cluster
maps (a single killed OSD is not marked down for ~900 s, as no peer reports it), and never by
a bare ``kill -0``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.ceph.conf import DAEMONS, MON, OSD, Daemon, Layout
from vmlab.ceph.info import ClusterInfo
from vmlab.ceph.proc import INSTALL_HINT, netns_prefix, rbd_cli
from vmlab.errors import CommandError, HostError, LaunchError
from vmlab.proc import Deadline, alive, cmdline, pids_with_arg, run, signal_and_wait, stop_pid

log = logging.getLogger(__name__)

ASOK_TIMEOUT_S = 2.0
DAEMON_ENV = {"MALLOC_ARENA_MAX": "2"}  # else the OSD grows to 0.5-0.8 GB on glibc arenas
_POLL_S = 0.1


@dataclass(frozen=True)
class DaemonStatus:
    """One daemon as /proc and its admin socket see it."""

    name: str  # mon.a, mgr.x, osd.0
    pid: int | None
    alive: bool  # process running (not a zombie) and its admin socket answers
    asok: Path
    rss_kib: int | None = None
    state: str = ""  # mon: leader/probing...; osd: booting/active...; "" if unknown


class Daemons:
    """The three daemons of the cluster laid out in ``layout``."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def start(self, d: Daemon, netns: str | None, deadline: Deadline) -> None:
        """Start ``d`` (in ``netns``); returns once it has daemonized."""
        layout = self._layout
        layout.pidfile(d).unlink(missing_ok=True)  # a dead daemon's pidfile
        argv = [
            *netns_prefix(netns),
            d.binary, "--cluster", "ceph", "-c", str(layout.conf), "-i", d.ident,
        ]  # fmt: skip
        log.debug("starting %s: %s", d.name, argv)
        # The daemon forks; its parent exits once the child is initialized (the OSD: ~1.5 s).
        # Output goes to a file, never a pipe: the daemon may keep the descriptor open.
        try:
            done = run(
                argv, timeout_s=max(1.0, deadline.remaining_s()), what=d.binary, check=False,
                env={**os.environ, **DAEMON_ENV}, output=layout.stdio_log(d),
                missing_hint=INSTALL_HINT,
            )  # fmt: skip
        except CommandError as exc:  # with check=False: only when it outlives the deadline
            raise self.error(d, argv, None, "did not daemonize in time") from exc
        if not done.ok:
            raise self.error(d, argv, done.returncode, "did not start")

    def error(self, d: Daemon, argv: Sequence[str], rc: int | None, what: str) -> CommandError:
        """What went wrong with ``d``, with the tails of its stdout/stderr and its log."""
        layout = self._layout
        output = "\n".join(t for t in (tail(layout.stdio_log(d)), tail(layout.log(d))) if t)
        return CommandError(
            f"{d.binary} {d.ident} {what}",
            argv=argv,
            returncode=rc,
            output=output,
            log=layout.log(d),
            hint="read the log; `vmlab ceph purge` and `up` again if the data is expendable",
        )

    def stop_all(self, deadline: Deadline, only: Sequence[Daemon] | None = None) -> None:
        """Stop the daemons (``only`` these, if given) in reverse start order; after stopping
        them all, kill whatever else still names our ceph.conf."""
        for d in reversed(DAEMONS):
            if only is None or d in only:
                self.stop(d, deadline)
        if only is None:
            self.kill_stragglers()

    def stop(self, d: Daemon, deadline: Deadline) -> None:
        """SIGTERM, then SIGKILL; HostError if even SIGKILL does not end it."""
        pid = self.live_pid(d)
        if pid is None:
            self._layout.pidfile(d).unlink(missing_ok=True)
            return
        log.info("stopping %s (pid %s)", d.name, pid)
        # The OSD tells the mon it is going down (up to 5 s when the mon is gone, so the OSD
        # stops first); then fast shutdown. Only a process naming our ceph.conf is signalled.
        grace_s = min(20.0, deadline.remaining_s())
        if not stop_pid(pid, grace_s=grace_s, what=d.name, arg=str(self._layout.conf)):
            raise HostError(
                f"{d.name} (pid {pid}) did not exit after SIGKILL",
                hint=f"it may be stuck in the kernel: see /proc/{pid}/stack",
            )

    def kill_stragglers(self) -> None:
        """SIGKILL any live process naming our ceph.conf (lost pidfile, half-made cluster)."""
        marker = str(self._layout.conf)
        for pid in pids_with_arg(marker):
            if pid == os.getpid():
                continue
            log.warning("killing straggler pid %s (%s)", pid, " ".join(cmdline(pid))[:200])
            signal_and_wait(pid, signal.SIGKILL, 10.0, arg=marker)

    def live_pid(self, d: Daemon) -> int | None:
        """The pid in ``d``'s pidfile, if that process runs and names our ceph.conf."""
        try:
            pid = int(self._layout.pidfile(d).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid, arg=str(self._layout.conf)) else None

    def asok_answers(self, d: Daemon) -> bool:
        return asok_json(self._layout.asok(d), {"prefix": "version"}) is not None

    def status(self, d: Daemon) -> DaemonStatus:
        """Alive means: the process runs and its admin socket answers (whatever the maps say)."""
        asok = self._layout.asok(d)
        pid = self.live_pid(d)
        state = ""
        answers = False
        if pid is not None:
            if d.kind == "mon":
                answer = asok_json(asok, {"prefix": "mon_status"})
            elif d.kind == "osd":
                answer = asok_json(asok, {"prefix": "status"})
            else:
                answer = asok_json(asok, {"prefix": "version"})
            answers = answer is not None
            if answer is not None:
                state = str(answer.get("state", "running"))
        return DaemonStatus(
            name=d.name,
            pid=pid,
            alive=answers,
            asok=asok,
            rss_kib=rss_kib(pid) if pid is not None else None,
            state=state,
        )

    def _wait_for(
        self, d: Daemon, command: Mapping[str, Any], states: Sequence[str], deadline: Deadline
    ) -> None:
        last = "no answer"
        while True:
            answer = asok_json(self._layout.asok(d), command)
            if answer is not None:
                last = str(answer.get("state"))
                if last in states:
                    return
            if self.live_pid(d) is None:
                raise self.error(d, [d.binary], None, "died while starting")
            if deadline.expired():
                raise LaunchError(
                    f"{d.name} not ready in {deadline.timeout_s:.0f} s (state: {last})",
                    log=self._layout.log(d),
                )
            time.sleep(_POLL_S)

    def wait_mon(self, deadline: Deadline) -> None:
        self._wait_for(MON, {"prefix": "mon_status"}, ("leader",), deadline)

    def wait_osd_active(self, deadline: Deadline) -> None:
        # "active" means the OSD saw itself up in the osdmap: clients asking now get a map with
        # its new address (asking earlier after a restart stalls them ~15 s on the old one).
        self._wait_for(OSD, {"prefix": "status"}, ("active",), deadline)


def wait_for_io(info: ClusterInfo, deadline: Deadline) -> None:
    """One RADOS read in the pool, retried until its PGs are active."""
    while True:
        try:
            rbd_cli(
                info,
                ["ls", "--pool", info.pool, "--rados-osd-op-timeout=5"],
                what="rbd ls (I/O probe)",
                timeout_s=min(15.0, max(1.0, deadline.remaining_s())),
            )
            return
        except CommandError:
            if deadline.expired():
                raise
            time.sleep(0.5)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def asok_command(
    path: Path, command: Mapping[str, Any], *, timeout_s: float = ASOK_TIMEOUT_S
) -> str:
    """Send one command to a Ceph admin socket (what ``ceph daemon PATH ...`` does).

    Protocol: the JSON command and a NUL byte; the answer is a big-endian u32 length and as
    many bytes. Raises OSError when nobody answers.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(dict(command)).encode() + b"\0")
        header = _recv_exactly(sock, 4)
        (length,) = struct.unpack(">I", header)
        return _recv_exactly(sock, length).decode(errors="replace")


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 16))
        if not chunk:
            raise ConnectionError("admin socket closed early")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def asok_json(path: Path, command: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        answer = json.loads(asok_command(path, command))
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
