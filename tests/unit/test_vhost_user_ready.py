"""A vhost-user-blk guest must not wait, silent, on its disk's server: qemu-storage-daemon's
export is proven ready before QEMU starts (without a probe connection, which would queue
QEMU behind it), a daemon that dies fails the case, and a QEMU stalled on a vhost-user socket
fails by a deadline, naming the socket and the server's log."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmlab.errors import LaunchError
from vmlab.launch.qemu import Deadlines, QemuProcess, VhostUserBackend, _Monitor, blocked_on
from vmlab.launch.watch import wait_marker
from vmlab.proc import ManagedProcess
from vmlab.spec.models import Disk
from vmlab.storage.qsd import _watch, export_id, export_listed, wait_export_ready

EXPORT = {"type": "vhost-user-blk", "id": "exp-data", "node-name": "fmt-data"}


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A listening unix socket, as qsd's export makes it."""
    path = tmp_path / "vhost-user.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.setblocking(False)
    try:
        yield path, server
    finally:
        server.close()


def test_the_export_is_ready_once_qmp_lists_it_and_no_one_has_connected(
    listening: tuple[Path, socket.socket], tmp_path: Path
) -> None:
    path, server = listening
    answers = [[], [{**EXPORT, "id": "exp-other"}], [EXPORT]]
    asked: list[int] = []

    def query() -> object:
        asked.append(1)
        return answers[min(len(asked), len(answers)) - 1]

    waited = wait_export_ready(
        query, "exp-data", path, timeout_s=5, log_path=tmp_path / "qsd.log", poll_s=0.001
    )
    assert waited >= 0 and len(asked) == 3
    with pytest.raises(BlockingIOError):  # no probe connection queued ahead of QEMU
        server.accept()


def test_an_export_qmp_does_not_list_is_a_launch_error_naming_socket_and_log(
    listening: tuple[Path, socket.socket], tmp_path: Path
) -> None:
    path, _ = listening
    log = tmp_path / "qsd-data.log"
    with pytest.raises(LaunchError) as caught:
        wait_export_ready(lambda: [], "exp-data", path, timeout_s=0.05, log_path=log)
    assert str(path) in caught.value.message and "exp-data" in caught.value.message
    assert "query-block-exports does not list it" in caught.value.message
    assert caught.value.log == log


def test_a_listed_export_whose_socket_is_missing_or_not_a_socket_is_not_ready(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vhost-user.sock"
    for make in (lambda: None, lambda: path.write_text("")):
        make()
        with pytest.raises(LaunchError, match="is not a socket"):
            wait_export_ready(
                lambda: [EXPORT], "exp-data", path, timeout_s=0.05, log_path=tmp_path / "l"
            )


def test_a_daemon_that_died_while_waiting_is_its_own_error(
    listening: tuple[Path, socket.socket], tmp_path: Path
) -> None:
    def gone() -> None:
        raise LaunchError("qemu-storage-daemon exited with status 1")

    with pytest.raises(LaunchError, match="exited with status 1"):
        wait_export_ready(
            lambda: [],
            "exp-data",
            listening[0],
            timeout_s=5,
            log_path=tmp_path / "l",
            check_running=gone,
        )


def test_an_export_shutting_down_or_an_odd_answer_is_not_listed() -> None:
    assert export_listed([EXPORT], "exp-data")
    assert not export_listed([{**EXPORT, "shutting-down": True}], "exp-data")
    assert not export_listed({"return": []}, "exp-data")
    assert not export_listed(["exp-data"], "exp-data")
    assert export_id(Disk(name="data")) == "exp-data"  # the template's id


def test_a_daemon_that_exits_while_the_guest_runs_trips_the_case(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('qsd: rbd: lost', file=sys.stderr); exit(3)"]
    log = tmp_path / "qsd-data.log"
    proc = QemuProcess(
        argv,
        guest_dir=tmp_path,
        qmp_socket=tmp_path / "qmp.sock",
        serial_log=tmp_path / "none",
        qemu_log=log,
        deadlines=Deadlines(qmp_s=1, boot_s=0, banner_s=0, login_s=0, powerdown_s=0),
        kind="daemon",
    )
    proc.process = ManagedProcess(argv, log_path=log, what="qemu-storage-daemon")
    assert _watch(proc, Disk(name="data"), log) is None  # not started: nothing to say
    proc.process.start()
    proc.proc = proc.process.proc
    assert proc.process.wait(10) == 3
    failure = _watch(proc, Disk(name="data"), log)
    assert failure is not None and failure.log == log
    assert "status 3" in failure.message and "rbd: lost" in failure.message


# --- QEMU waiting on a vhost-user back end ----------------------------------------------------

SILENT_QEMU = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
c, _ = s.accept()
c.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},'
          b' "capabilities": []}}\\r\\n')
time.sleep(60)  # the monitor thread greeted; the main loop never answers qmp_capabilities
"""


def test_a_qemu_whose_main_loop_never_answers_qmp_fails_by_the_deadline_naming_the_socket(
    tmp_path: Path,
) -> None:
    backend = VhostUserBackend(tmp_path / "vu.sock", tmp_path / "case" / "qsd-data.log")
    started = time.monotonic()
    with (
        pytest.raises(LaunchError) as caught,
        QemuProcess(
            [sys.executable, "-c", SILENT_QEMU, str(tmp_path / "qmp.sock")],
            guest_dir=tmp_path,
            qmp_socket=tmp_path / "qmp.sock",
            serial_log=tmp_path / "serial.log",
            qemu_log=tmp_path / "qemu.log",
            deadlines=Deadlines(qmp_s=1, boot_s=1, banner_s=1, login_s=1, powerdown_s=1),
            vhost_user=[backend],
        ),
    ):
        pytest.fail("QEMU came up")
    assert time.monotonic() - started < 10
    message = caught.value.message
    assert "did not answer within 1 s" in message
    assert f"vhost-user socket {backend.socket}" in message and str(backend.log) in message
    assert caught.value.log == tmp_path / "qemu.log"
    assert "vmlab:" in (tmp_path / "qemu.log").read_text()  # its threads, noted
    assert "thread " in (tmp_path / "qemu.log").read_text()


class FakeQmp:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.timeouts: list[float | None] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeouts.append(timeout)

    def cmd(self, name: str) -> object:
        assert name == "query-status"
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_a_silent_guest_is_explained_by_whether_qemus_main_loop_answers(tmp_path: Path) -> None:
    backends = [VhostUserBackend(tmp_path / "vu.sock", tmp_path / "qsd-data.log")]
    blocked = blocked_on(backends, FakeQmp(TimeoutError()), timeout_s=2)  # type: ignore[arg-type]
    assert "main loop did not answer QMP within 2 s" in blocked
    assert str(tmp_path / "vu.sock") in blocked and "qsd-data.log" in blocked
    running = blocked_on(backends, FakeQmp({"status": "running"}), timeout_s=2)  # type: ignore[arg-type]
    assert "answers QMP (status running)" in running and "I/O to a vhost-user disk" in running
    assert blocked_on([], FakeQmp({"status": "running"}), timeout_s=2) == ""  # type: ignore[arg-type]


def test_the_boot_timeout_says_what_the_guest_may_wait_on(tmp_path: Path) -> None:
    (tmp_path / "serial.log").write_text("")
    with pytest.raises(LaunchError) as caught:
        wait_marker(
            tmp_path / "serial.log",
            "READY",
            failed=None,
            timeout_s=0.1,
            started_at=time.monotonic(),
            accel="tcg",
            qemu_log=None,
            check_alive=lambda when: None,
            explain_timeout=lambda: "QEMU waits on vhost-user socket /x",
        )
    assert caught.value.message.endswith("within 0 s: QEMU waits on vhost-user socket /x")


def test_a_greeting_that_comes_late_within_the_deadline_is_fine(tmp_path: Path) -> None:
    """The deadline bounds negotiation; it does not cut a QEMU that is merely slow."""
    path = tmp_path / "qmp.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    asked: list[str] = []

    def serve() -> None:
        conn, _ = server.accept()
        time.sleep(0.3)
        conn.sendall(
            b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": ""}, "capabilities": []}}\r\n'
        )
        buf = conn.recv(4096)  # one small JSON object, no newline
        while not buf.rstrip().endswith(b"}"):
            buf += conn.recv(4096)
        request = json.loads(buf)
        asked.append(request["execute"])
        conn.sendall(json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\r\n")
        time.sleep(1)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    qmp = _Monitor(str(path))
    started = time.monotonic()
    try:
        qmp.connect_within(5)
        assert asked == ["qmp_capabilities"]  # negotiated, 0.3 s late, within the deadline
        assert time.monotonic() - started < 5
    finally:
        qmp.close()
        server.close()
