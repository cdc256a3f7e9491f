"""The micro cluster's daemons (ceph-mon, ceph-mgr, ceph-osd): admin sockets and /proc.

Ceph daemons daemonize, so they end up as children of PID 1, which on some hosts reaps nothing:
a dead daemon can linger as a zombie. Liveness is judged from ``/proc/PID/stat`` (state ``Z`` is
dead), the command line, and the daemon's admin socket -- never by a bare ``kill -0``.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ASOK_TIMEOUT_S = 2.0


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
