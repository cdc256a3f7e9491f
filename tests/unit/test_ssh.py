"""GuestSSH.run's deadline while the server never answers the exec request (a hung guest's sshd).

The server is paramiko's own SSH server in a thread: it accepts the login and the session
channel, then holds the exec request, which paramiko's client waits for without a timeout.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import GuestError
from vmlab.guest.ssh import GuestSSH


def _key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


class HungExec(paramiko.ServerInterface):
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.release.wait(timeout=30)  # the guest hangs: no answer
        return False


@pytest.fixture
def hung_server() -> Iterator[tuple[int, str]]:
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
        transport.start_server(server=HungExec(release))

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
