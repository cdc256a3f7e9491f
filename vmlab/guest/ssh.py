"""SSH into a guest with paramiko: a per-lab ed25519 key, the guest's host key pinned.

The host key is known before the guest boots (the image build made it), so there is no
trust-on-first-use: a guest answering with any other key is refused.
"""

from __future__ import annotations

import base64
import io
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import GuestError

log = logging.getLogger(__name__)


def lab_key(path: Path) -> paramiko.Ed25519Key:
    """The lab's client key, created (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(pem)
        tmp.replace(path)
        log.info("created lab SSH key %s", path)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def public_line(key: paramiko.PKey, comment: str = "vmlab") -> str:
    return f"{key.get_name()} {key.get_base64()} {comment}"


def wait_banner(host: str, port: int, *, timeout_s: float) -> float:
    """Wait until an SSH server answers with its 'SSH-' banner; returns seconds waited.

    QEMU's user-mode hostfwd accepts TCP before the guest's sshd listens, so a successful
    connect proves nothing: only the banner does.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last: str = "no attempt"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2.0) as sock:
                sock.settimeout(2.0)
                data = sock.recv(256)
                if data.startswith(b"SSH-"):
                    return time.monotonic() - start
                last = f"got {data[:20]!r} instead of a banner"
        except OSError as exc:
            last = str(exc)
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
    ) -> GuestSSH:
        """Log in, retrying until the deadline (the banner may come before auth is ready)."""
        keytype, blob = host_key.split()[:2]
        pinned = paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
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
                    timeout=5.0,
                    banner_timeout=5.0,
                    auth_timeout=5.0,
                    allow_agent=False,
                    look_for_keys=False,
                )
                return cls(client, f"{user}@{host}:{port}")
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise GuestError(
                    f"{host}:{port} answered with another host key than the image's",
                    hint="another guest holds this port; stop stale guests",
                ) from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                last = exc
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
        """Run a command in the guest's shell; the caller quotes (shlex.join) what it builds."""
        log.debug("%s$ %s", self.where, command)
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(command, timeout=timeout_s)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            stdout = chan_out.read()
            stderr = chan_err.read()
            code = chan_out.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            raise GuestError(
                f"{self.where}: {command!r} did not finish within {timeout_s:.0f} s ({exc})"
            ) from exc
        result = CommandResult(command, code, stdout, stderr)
        if check and code != 0:
            err = stderr.decode(errors="replace").strip()[-500:]
            raise GuestError(f"{self.where}: {command!r} exited {code}: {err}")
        return result

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
