"""GuestSSH against a real OpenSSH sshd on 127.0.0.1: deadlines, output kept, stdin, exit codes.

The sshd is started by the test (a free port, a generated host key, a generated client key as
its only authorised key) and stopped at the end, with whatever its sessions left running.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import GuestError
from vmlab.guest.ssh import GuestSSH, wait_banner

pytestmark = pytest.mark.integration

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd running as root insists on it
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keypair() -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


def _pids_with_env(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (what this sshd's sessions started)."""
    needle = marker.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found


def _within(limit_s: float, call: Callable[[], T]) -> T:
    """``call()``, failing the test (not hanging it) if it takes longer than ``limit_s``."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    try:
        return future.result(timeout=limit_s)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"still running after {limit_s} s: GuestSSH.run has no real deadline")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def ssh(tmp_path: Path) -> Iterator[GuestSSH]:
    if not SSHD.is_file():
        pytest.skip(
            f"{SSHD} is missing: apt-get install --no-install-recommends openssh-server "
            "(scripts/setup --dev)"
        )
    host_private, host_public = _keypair()
    client_private, client_public = _keypair()
    host_key = tmp_path / "host_key"
    host_key.touch(mode=0o600)
    host_key.write_bytes(host_private)
    (tmp_path / "authorized_keys").write_text(client_public + "\n")
    marker = f"VMLAB_TEST_SSHD={tmp_path.name}-{os.getpid()}"
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                "PidFile none",
                f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the keys live under /tmp
                "PrintMotd no",
                f"SetEnv {marker}",  # so the teardown finds what the sessions left running
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log_path = tmp_path / "sshd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_banner("127.0.0.1", port, timeout_s=15)
        except GuestError:
            pytest.fail(f"sshd did not start: {log_path.read_text(errors='replace')[-800:]}")
        key = paramiko.Ed25519Key.from_private_key_file(str(_write(tmp_path, client_private)))
        with GuestSSH.connect(
            "127.0.0.1",
            port,
            user=getpass.getuser(),
            key=key,
            host_key=host_public,
            timeout_s=15,
        ) as session:
            yield session
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid in _pids_with_env(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _write(folder: Path, private: bytes) -> Path:
    path = folder / "client_key"
    path.touch(mode=0o600)
    path.write_bytes(private)
    return path


def _timed_out(ssh: GuestSSH, command: str, timeout_s: float) -> tuple[GuestError, float]:
    """Run ``command`` expecting GuestError at the deadline; (the error, seconds it took)."""

    def call() -> tuple[GuestError, float]:
        start = time.monotonic()
        with pytest.raises(GuestError) as caught:
            ssh.run(command, timeout_s=timeout_s)
        return caught.value, time.monotonic() - start

    return _within(timeout_s + 8, call)


def test_quick_command_returns_output_and_exit_status(ssh: GuestSSH) -> None:
    result = ssh.run("echo hello; echo warn >&2", timeout_s=10)
    assert result.exit_code == 0
    assert result.stdout == b"hello\n"
    assert result.stderr == b"warn\n"
    assert result.text == "hello\n"


def test_non_zero_exit_raises_with_check_and_returns_without(ssh: GuestSSH) -> None:
    with pytest.raises(GuestError, match=r"exited 3: bad") as caught:
        ssh.run("echo out; echo bad >&2; exit 3", timeout_s=10)
    assert caught.value.exit_code == 3
    assert caught.value.stdout == b"out\n"
    assert caught.value.stderr == b"bad\n"
    assert not caught.value.timed_out
    result = ssh.run("echo bad >&2; exit 3", timeout_s=10, check=False)
    assert (result.exit_code, result.stderr) == (3, b"bad\n")


def test_stdin_and_large_output_flow_both_ways(ssh: GuestSSH, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # beyond paramiko's 2 MiB window: stdin must keep flowing
    target = tmp_path / "put.bin"
    ssh.put(data, str(target), mode=0o600)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    digest = ssh.run(f"sha256sum {target}", timeout_s=30).text.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    big = ssh.run("head -c 5000000 /dev/zero", timeout_s=30)
    assert big.stdout == bytes(5_000_000)


def test_silent_command_fails_at_the_deadline(ssh: GuestSSH) -> None:
    error, took_s = _timed_out(ssh, "sleep 30; echo never", timeout_s=2)
    assert 1.9 <= took_s < 3.5
    assert "'sleep 30; echo never' did not finish within 2 s" in str(error)
    assert error.timed_out and error.exit_code is None
    assert error.command == "sleep 30; echo never"
    assert error.stdout == b""
    assert ssh.run("echo again", timeout_s=10).stdout == b"again\n"  # the session lives on


def test_output_so_far_is_kept_on_a_timeout(ssh: GuestSSH) -> None:
    error, took_s = _timed_out(ssh, "echo partial; echo half >&2; sleep 30", timeout_s=2)
    assert took_s < 3.5
    assert error.timed_out
    assert error.stdout == b"partial\n"
    assert error.stderr == b"half\n"


def test_a_command_that_keeps_printing_still_has_a_deadline(ssh: GuestSSH) -> None:
    """Each read gets data well within the timeout: only a whole-command deadline stops it."""
    error, took_s = _timed_out(ssh, "while :; do echo tick; sleep 0.3; done", timeout_s=2)
    assert took_s < 3.5
    assert error.timed_out
    assert error.stdout.startswith(b"tick\ntick\n")


def test_closed_output_does_not_leave_the_exit_status_unbounded(ssh: GuestSSH) -> None:
    """stdout and stderr reach EOF at once; the exit status comes 30 s later."""
    error, took_s = _timed_out(ssh, "exec >/dev/null 2>&1; sleep 30", timeout_s=2)
    assert took_s < 3.5
    assert error.timed_out
