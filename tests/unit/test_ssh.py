"""GuestSSH.run's deadline while the server never answers the exec request (a hung guest's
sshd), and the lab key.

The server is paramiko's own SSH server in a thread: it accepts the login and the session
channel, then holds the exec request, which paramiko's client waits for without a timeout.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import AUTH_SUCCESSFUL, OPEN_SUCCEEDED

from vmlab.errors import GuestError, HostError
from vmlab.guest.ssh import GuestSSH, lab_key, open_banner, wait_banner


def _key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


class HungExec(paramiko.ServerInterface):
    """Holds the exec request (``answer``: accepts it, then the command never prints or ends)."""

    def __init__(self, release: threading.Event, *, answer: bool) -> None:
        self.release = release
        self.answer = answer

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.answer:
            return True  # ... and nothing more: no output, no exit status
        self.release.wait(timeout=30)  # the guest hangs: no answer
        return False


@pytest.fixture
def hung_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    answer = bool(getattr(request, "param", False))
    host_key = _key()
    release = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        listener.settimeout(10)
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        transport = paramiko.Transport(sock)
        transports.append(transport)
        transport.add_server_key(host_key)
        transport.start_server(server=HungExec(release, answer=answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], f"{host_key.get_name()} {host_key.get_base64()}"
    finally:
        release.set()
        listener.close()
        thread.join(timeout=10)
        for transport in transports:
            transport.close()


def test_run_has_a_deadline_while_the_exec_request_gets_no_answer(
    hung_server: tuple[int, str],
) -> None:
    port, host_key = hung_server
    ssh = GuestSSH.connect(
        "127.0.0.1", port, user="vmlab", key=_key(), host_key=host_key, timeout_s=10
    )
    caught: list[BaseException] = []

    def call() -> None:
        try:
            ssh.run("fio job.fio", timeout_s=1)
        except BaseException as exc:  # handed to the test thread
            caught.append(exc)

    with ssh:
        start = time.monotonic()
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(timeout=8)
        took_s = time.monotonic() - start
        assert not worker.is_alive(), "GuestSSH.run waited past its deadline for the exec answer"
    assert took_s < 2.5
    [error] = caught
    assert isinstance(error, GuestError)
    assert error.timed_out
    assert "'fio job.fio' did not finish within 1 s" in str(error)


@pytest.mark.parametrize(
    "hung_server", [False, True], ids=["exec-unanswered", "command-silent"], indirect=True
)
def test_a_failing_close_neither_hides_the_timeout_nor_escapes_the_watchdog(
    hung_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing sends a message: when the connection goes down meanwhile, close() raises. That
    must not replace the timeout, nor end the watchdog's thread with a traceback."""
    port, host_key = hung_server
    original = paramiko.Channel.close

    def failing_close(chan: paramiko.Channel) -> None:
        original(chan)
        raise OSError("the connection went down")

    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    with GuestSSH.connect(
        "127.0.0.1", port, user="vmlab", key=_key(), host_key=host_key, timeout_s=10
    ) as ssh:
        monkeypatch.setattr(paramiko.Channel, "close", failing_close)
        with pytest.raises(GuestError) as info:
            ssh.run("fio job.fio", timeout_s=1)
        monkeypatch.setattr(paramiko.Channel, "close", original)
    assert info.value.timed_out
    time.sleep(0.2)  # let the watchdog's thread finish
    assert escaped == []


@pytest.mark.parametrize("hung_server", [True], ids=["command-silent"], indirect=True)
def test_a_silent_command_is_waited_for_without_polling(
    hung_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a command (fio) runs silently, run() sleeps until something arrives or the
    deadline passes: a handful of wake-ups, not one every few milliseconds that would take
    CPU from the guest being measured."""
    import vmlab.guest.ssh as ssh_module

    port, host_key = hung_server
    wakeups: list[str] = []
    real_select, real_sleep = ssh_module.select.select, ssh_module.time.sleep

    def counted_select(*args: Any) -> Any:
        wakeups.append("select")
        return real_select(*args)

    def counted_sleep(seconds: float) -> None:
        wakeups.append("sleep")
        real_sleep(seconds)

    with GuestSSH.connect(
        "127.0.0.1", port, user="vmlab", key=_key(), host_key=host_key, timeout_s=10
    ) as ssh:
        monkeypatch.setattr(ssh_module.select, "select", counted_select)
        monkeypatch.setattr(ssh_module.time, "sleep", counted_sleep)
        start = time.monotonic()
        with pytest.raises(GuestError) as info:
            ssh.run("fio -", timeout_s=1.5, stdin=b"[job]\n")
        took_s = time.monotonic() - start
    assert info.value.timed_out
    assert 1.4 < took_s < 2.5
    assert len(wakeups) <= 5, wakeups


# --- the lab key -----------------------------------------------------------------------------


def test_lab_key_is_made_once_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "lab" / "id_ed25519"
    first = lab_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert lab_key(path).get_base64() == first.get_base64()


def _rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_text("not a key\n"),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(_rsa_pem()),  # a key, but not the ed25519 vmlab made
        lambda p: p.mkdir(),
    ],
    ids=["garbage", "empty", "rsa", "directory"],
)
def test_an_unusable_lab_key_is_a_host_error(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    path = tmp_path / "id_ed25519"
    make(path)
    with pytest.raises(HostError) as info:
        lab_key(path)
    assert str(path) in str(info.value)
    assert info.value.hint and "delete" in info.value.hint


def test_a_lab_key_that_cannot_be_created_is_a_host_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state folder should be\n")
    with pytest.raises(HostError, match="cannot create the lab SSH key"):
        lab_key(tmp_path / "state" / "lab" / "id_ed25519")


def test_a_slow_banner_gets_a_longer_window_instead_of_endless_reconnects() -> None:
    """Every connection's banner comes 0.5 s after accept: windows of 0.2 and 0.4 s stay
    silent, the third (0.8 s) gets it. A fixed window shorter than the guest's answer would
    reconnect until the deadline."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

            def answer(c: socket.socket = conn) -> None:
                time.sleep(0.5)
                with contextlib.suppress(OSError):  # the client gave up on this one
                    c.sendall(b"SSH-2.0-slow\r\n")

            threading.Thread(target=answer, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        waited = wait_banner("127.0.0.1", port, timeout_s=10, first_window_s=0.2)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) == 3, len(accepted)
    assert 0.5 < waited < 5, waited


def test_the_banner_connection_is_the_one_logged_in_over(hung_server: tuple[int, str]) -> None:
    """The server accepts one connection only: the login must use open_banner's, whose
    banner was peeked at and is still there for paramiko to read."""
    port, host_key = hung_server
    sock = open_banner("127.0.0.1", port, timeout_s=10)
    assert sock.recv(4, socket.MSG_PEEK) == b"SSH-"
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    with GuestSSH.connect(
        "127.0.0.1", port, user="vmlab", key=_key(), host_key=host_key, timeout_s=10, sock=sock
    ) as ssh:
        transport = ssh.client.get_transport()
        assert transport is not None and transport.is_authenticated()
        assert transport.sock is sock
