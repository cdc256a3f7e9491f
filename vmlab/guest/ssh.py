"""SSH into a guest with paramiko: a per-lab ed25519 key, the guest's host key pinned.

The host key is known before the guest boots (the image build made it), so there is no
trust-on-first-use: a guest answering with any other key is refused.
"""

from __future__ import annotations

import base64
import io
import logging
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import GuestError, HostError

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # bytes read or sent at a time
POLL_MIN_S = 0.001  # GuestSSH.run waiting to send stdin polls: soon after progress ...
POLL_MAX_S = 0.02  # ... and at most this long after none


def lab_key(path: Path) -> paramiko.Ed25519Key:
    """The lab's client key, created (mode 0600) on first use; HostError if it cannot be made
    or read as the unencrypted ed25519 key vmlab makes."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.touch(mode=0o600)
            tmp.write_bytes(pem)
            tmp.replace(path)
        except OSError as exc:
            raise HostError(
                f"cannot create the lab SSH key {path}: {exc}",
                hint="vmlab keeps it under VMLAB_STATE (default ~/.local/state/vmlab): make "
                "that folder writable, or point VMLAB_STATE elsewhere",
            ) from exc
        log.info("created lab SSH key %s", path)
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise HostError(
            f"cannot read the lab SSH key {path}: {exc}",
            hint="it must be the unencrypted ed25519 key vmlab made; delete it and vmlab makes "
            "a new one (every guest is given the lab's key when it boots)",
        ) from exc


def public_line(key: paramiko.PKey, comment: str = "vmlab") -> str:
    return f"{key.get_name()} {key.get_base64()} {comment}"


def wait_banner(host: str, port: int, *, timeout_s: float, first_window_s: float = 2.0) -> float:
    """Wait until an SSH server answers with its 'SSH-' banner; returns seconds waited (see
    :func:`open_banner`, whose connection this closes)."""
    start = time.monotonic()
    open_banner(host, port, timeout_s=timeout_s, first_window_s=first_window_s).close()
    return time.monotonic() - start


def open_banner(
    host: str, port: int, *, timeout_s: float, first_window_s: float = 2.0
) -> socket.socket:
    """Wait until an SSH server answers with its 'SSH-' banner; returns that connection with
    the banner peeked at, not read, so that ``GuestSSH.connect(sock=...)`` logs in over it
    (a second connection cost the guest another sshd child and the login ~0.03 s under TCG).

    QEMU's user-mode hostfwd accepts TCP before the guest's sshd listens, so a successful
    connect proves nothing: only the banner does. A connection that stays silent gets a window
    twice as long the next time (up to 30 s): a guest slow enough to need more than the first
    window (TCG inside TCG beside a busy L1) would otherwise be reconnected forever, each
    attempt leaving it one more sshd child to serve.
    """
    deadline = time.monotonic() + timeout_s
    window = first_window_s
    last: str = "no attempt"
    while time.monotonic() < deadline:
        try:
            sock = _nodelay_socket(host, port, timeout_s=2.0)
        except OSError as exc:
            last = str(exc) or type(exc).__name__
            time.sleep(0.2)
            continue
        try:
            sock.settimeout(max(min(window, deadline - time.monotonic()), 0.1))
            try:
                data = sock.recv(256, socket.MSG_PEEK)
            except TimeoutError:
                window = min(window * 2, 30.0)
                raise
            if data.startswith(b"SSH-"):
                sock.settimeout(5.0)
                return sock
            last = f"got {data[:20]!r} instead of a banner"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
        sock.close()
        time.sleep(0.2)
    raise GuestError(
        f"no SSH banner from {host}:{port} within {timeout_s:.0f} s ({last})",
        hint="the guest booted but its sshd did not start: read serial.log",
    )


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def _close(chan: paramiko.Channel) -> None:
    """Close a channel whose connection may be going down (closing sends a message): a failure
    there must not hide the command's own outcome, nor escape the watchdog's thread."""
    try:
        chan.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        log.debug("closing an SSH channel: %s", exc)


def _nodelay_socket(host: str, port: int, *, timeout_s: float) -> socket.socket:
    """A TCP connection that sends each SSH packet at once. paramiko leaves Nagle on, so a
    small packet waits for the ACK of the one before, which the guest delays: a login took
    0.13 s under TCG, 0.04 s with this (and the key exchange 0.07 s, 0.025 s)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class GuestSSH:
    """An open SSH session to a guest; use as a context manager."""

    def __init__(self, client: paramiko.SSHClient, where: str) -> None:
        self.client = client
        self.where = where

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        user: str,
        key: paramiko.PKey,
        host_key: str,
        timeout_s: float,
        sock: socket.socket | None = None,
    ) -> GuestSSH:
        """Log in, retrying until the deadline (the banner may come before auth is ready);
        the first attempt over ``sock`` when given (:func:`open_banner`'s connection), which
        is then this session's or closed."""
        keytype, blob = host_key.split()[:2]
        pinned = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        window = 5.0  # banner and auth, doubled after each failed attempt (see open_banner)
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            client.get_host_keys().add(f"[{host}]:{port}" if port != 22 else host, keytype, pinned)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    host,
                    port=port,
                    username=user,
                    pkey=key,
                    sock=sock or _nodelay_socket(host, port, timeout_s=5.0),
                    banner_timeout=min(window, max(deadline - time.monotonic(), 1.0)),
                    auth_timeout=min(window, max(deadline - time.monotonic(), 1.0)),
                    allow_agent=False,
                    look_for_keys=False,
                )
                return cls(client, f"{user}@{host}:{port}")
            except paramiko.BadHostKeyException as exc:
                client.close()
                if sock is not None:
                    sock.close()
                raise GuestError(
                    f"{host}:{port} answered with another host key than the image's",
                    hint="another guest holds this port; stop stale guests",
                ) from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                if sock is not None:
                    sock.close()
                    sock = None  # the next attempt on a connection of its own
                last = exc
                window = min(window * 2, 30.0)
                time.sleep(0.3)
        raise GuestError(
            f"cannot log in to {user}@{host}:{port} within {timeout_s:.0f} s: {last}",
            hint="check the guest's serial.log; the image may lack the lab key",
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command in the guest's shell; the caller quotes (shlex.join) what it builds.

        ``timeout_s`` bounds the whole command, from opening its channel to its exit status.
        At the deadline the channel is closed and GuestError (``timed_out``) carries what the
        command printed so far in ``stdout``/``stderr``. The command's stdin is ``stdin``, then
        end-of-file (never a pipe nobody writes to). A non-zero exit raises GuestError with the
        output if ``check``; without it the result holds the exit code: -1 when the channel
        closed without one (the guest rebooted, the connection dropped).
        """
        log.debug("%s$ %s", self.where, command)
        deadline = time.monotonic() + timeout_s
        out = bytearray()
        err = bytearray()

        def failure(message: str, **data: Any) -> GuestError:
            return GuestError(
                f"{self.where}: {command!r} {message}",
                command=command,
                stdout=bytes(out),
                stderr=bytes(err),
                **data,
            )

        def timed_out() -> GuestError:
            return failure(
                f"did not finish within {timeout_s:g} s ({len(out)} bytes of output so far)",
                timed_out=True,
                hint="the guest may hang (read its serial.log), or the command needs more time",
            )

        chan: paramiko.Channel | None = None
        try:
            chan = self._start(command, deadline)
            code = self._exchange(chan, stdin or b"", deadline, out, err)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if time.monotonic() >= deadline:
                raise timed_out() from exc
            raise failure(f"failed over SSH ({exc})") from exc
        finally:
            if chan is not None:
                _close(chan)
        if code is None:
            raise timed_out()
        result = CommandResult(command, code, bytes(out), bytes(err))
        if check and code != 0:
            tail = result.stderr.decode(errors="replace").strip()[-500:]
            raise failure(f"exited {code}: {tail}", exit_code=code)
        return result

    def _start(self, command: str, deadline: float) -> paramiko.Channel:
        """A session channel running ``command``; closed by a watchdog at the deadline, since
        paramiko waits for the server's answer to the exec request without a timeout."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("the SSH connection is closed")
        chan = transport.open_session(timeout=max(deadline - time.monotonic(), 0.001))
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            _close(chan)  # wakes exec_command, which then raises

        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(command)
        except BaseException:
            _close(chan)
            raise
        finally:
            watchdog.cancel()
        if fired.is_set():  # it went off as the answer came: the channel is closed all the same
            raise paramiko.SSHException("no answer to the exec request before the deadline")
        return chan

    @staticmethod
    def _exchange(
        chan: paramiko.Channel, stdin: bytes, deadline: float, out: bytearray, err: bytearray
    ) -> int | None:
        """Feed stdin and collect stdout/stderr without ever blocking, until the command's
        exit status and the end of both streams; None at the deadline.

        Between messages it sleeps in ``select`` on the channel's event fd (or on the exit
        status event after end-of-file): no wake-ups while a long fio runs, so vmlab takes no
        CPU from the guest it measures, and no polling delay when the answer comes."""
        sent = 0
        if not stdin:
            chan.shutdown_write()
        pause_s = POLL_MIN_S
        while True:
            moved = False
            if chan.recv_ready():
                out += chan.recv(CHUNK)
                moved = True
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
                moved = True
            if sent < len(stdin) and chan.send_ready():
                try:
                    n = chan.send(stdin[sent : sent + CHUNK])
                except OSError:
                    n = 0
                # 0: the command closed its stdin or exited; its exit status tells the rest
                sent = sent + n if n else len(stdin)
                if sent >= len(stdin):
                    chan.shutdown_write()
                moved = True
            drained = not (chan.recv_ready() or chan.recv_stderr_ready())
            if drained and (chan.eof_received or chan.closed) and chan.exit_status_ready():
                return chan.recv_exit_status()  # ready: does not wait
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return None
            if moved:
                pause_s = POLL_MIN_S
            elif chan.eof_received or chan.closed:  # the event fd stays readable from here on
                chan.status_event.wait(left_s)
            elif sent < len(stdin):  # the peer's window is full: nothing to wait on but time
                time.sleep(min(pause_s, left_s))
                pause_s = min(pause_s * 2, POLL_MAX_S)
            else:
                select.select([chan], [], [], left_s)

    def put(self, data: bytes, remote: str, *, mode: int = 0o644, timeout_s: float = 60) -> None:
        """Write a file in the guest through a shell's stdin, not SFTP: Debian 12's dropbear
        (2022.83) aborts the whole connection when a channel opens while the previous SFTP
        channel is still closing (dropbear #321), which a put-then-run pattern hits."""
        target = shlex.quote(remote)
        self.run(f"cat > {target} && chmod {mode:o} {target}", stdin=data, timeout_s=timeout_s)

    def get(self, remote: str) -> bytes:
        buf = io.BytesIO()
        with self.client.open_sftp() as sftp:
            sftp.getfo(remote, buf)
        return buf.getvalue()
