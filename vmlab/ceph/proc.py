"""Processes of the micro Ceph cluster: running Ceph tools, liveness, admin sockets.

Ceph daemons daemonize, so they end up as children of PID 1, which on some hosts reaps nothing:
a dead daemon can linger as a zombie. Liveness is judged from ``/proc/PID/stat`` (state ``Z`` is
dead), the command line, and the daemon's admin socket -- never by a bare ``kill -0``.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmlab.errors import CommandError, HostError

log = logging.getLogger(__name__)

CEPH_PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-common")
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(CEPH_PACKAGES)
CLI_TIMEOUT_S = 30.0
ASOK_TIMEOUT_S = 2.0


def netns_prefix(netns: str | None) -> list[str]:
    """``ip netns exec NS`` for commands that must run inside a network namespace."""
    return ["ip", "netns", "exec", netns] if netns else []


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout_s: float = CLI_TIMEOUT_S,
    netns: str | None = None,
    hint: str | None = None,
) -> str:
    """Run a Ceph tool (in ``netns`` if given) and return its stdout; CommandError on failure."""
    full = [*netns_prefix(netns), *argv]
    log.debug("running %s", full)
    try:
        proc = subprocess.run(
            full,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HostError(f"{full[0]} is not installed", hint=INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise CommandError(
            f"{what}: no answer in {timeout_s:.0f} s",
            argv=full,
            returncode=None,
            output=output,
            hint=hint or "is the cluster up? `vmlab ceph status` shows its daemons",
        ) from exc
    if proc.returncode != 0:
        raise CommandError(
            f"{what} failed",
            argv=full,
            returncode=proc.returncode,
            output=proc.stdout + proc.stderr,
            hint=hint,
        )
    return proc.stdout


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, Z, ...) or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pid_is_live(pid: int, marker: str) -> bool:
    """True if PID runs (not a zombie) and its command line has ``marker`` as an argument."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X") and marker in cmdline(pid)


def pids_mentioning(marker: str) -> list[int]:
    """Live processes (not zombies) with ``marker`` as a command-line argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_is_live(int(entry.name), marker):
            found.append(int(entry.name))
    return sorted(found)


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


class Deadline:
    def __init__(self, timeout_s: float, what: str) -> None:
        self.end = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.what = what

    def remaining_s(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end
