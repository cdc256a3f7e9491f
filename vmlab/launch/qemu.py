"""Run one QEMU process: Popen + QMP + serial log, and stop it on every path.

QEMU runs in its own session, so Ctrl-C reaches vmlab (which then shuts the guest down in
order) rather than killing QEMU behind its back, and with PR_SET_PDEATHSIG, so it cannot
outlive a vmlab that was killed outright. A pidfile and an owner file let the next run sweep
up anything that still escaped.

A QEMU with vhost-user disks talks to their servers (qemu-storage-daemon, SPDK) in its main
loop, synchronously and without a timeout: a server that does not answer blocks QEMU while it
sets up its devices (QMP greets, but negotiation never ends) or once the guest starts the
disk (the guest hangs silent). Both waits have a deadline here, and their errors name each
vhost-user socket and its server's log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn, Self

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from vmlab.errors import LaunchError
from vmlab.launch.watch import check_kvm, wait_marker
from vmlab.paths import runtime_dir
from vmlab.proc import ManagedProcess, alive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VhostUserBackend:
    """A vhost-user socket QEMU connects to as it starts, and the log of the server behind it."""

    socket: Path
    log: Path | None = None

    def __str__(self) -> str:
        return f"vhost-user socket {self.socket}" + (
            f" (server log: {self.log})" if self.log else ""
        )


class _Monitor(QEMUMonitorProtocol):
    """QMP whose connect has a deadline. QEMU's monitor thread accepts and greets at once, but
    capability negotiation is answered by QEMU's main loop, which a device being set up (a
    vhost-user back end that does not answer) can hold for ever."""

    def connect_within(self, timeout_s: float) -> None:
        self._qmp.await_greeting = True
        self._qmp.negotiate = True
        self._sync(self._qmp.connect(self._address), timeout_s)


def thread_states(pid: int) -> list[str]:
    """One line per thread of ``pid``: name, state, kernel wait channel, syscall (number and
    arguments, as /proc shows them): where a stuck QEMU is stuck."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda p: p.name):
        fields = []
        for name in ("comm", "wchan", "syscall"):
            try:
                fields.append((task / name).read_text(errors="replace").strip() or "-")
            except OSError:
                fields.append("?")
        lines.append(f"thread {task.name} {fields[0]!r}: wchan {fields[1]}, syscall {fields[2]}")
    return lines


def blocked_on(
    backends: Sequence[VhostUserBackend], qmp: QEMUMonitorProtocol | None, *, timeout_s: float
) -> str:
    """Why a QEMU with vhost-user disks may not have booted its guest: whether its main loop
    still answers QMP (``query-status`` within ``timeout_s``) and which sockets it depends on.
    Empty without vhost-user disks."""
    if not backends:
        return ""
    where = "; ".join(str(b) for b in backends)
    if qmp is None:
        return f"its vhost-user disks are served through {where}"
    try:
        qmp.settimeout(timeout_s)
        status = qmp.cmd("query-status")
    except TimeoutError:  # before OSError: TimeoutError is one
        return (
            f"QEMU's main loop did not answer QMP within {timeout_s:g} s: it is blocked, most "
            f"likely waiting on {where}"
        )
    except (QMPError, OSError, EOFError) as exc:
        return f"QMP failed ({exc!r}); its vhost-user disks are served through {where}"
    state = status.get("status") if isinstance(status, dict) else status
    return (
        f"QEMU answers QMP (status {state}): the guest may be blocked on I/O to a vhost-user "
        f"disk, served through {where}"
    )


@dataclass(frozen=True)
class Deadlines:
    """How long each stage may take. TCG is several times slower than KVM at everything."""

    qmp_s: float
    boot_s: float
    banner_s: float
    login_s: float
    powerdown_s: float
    quit_s: float = 5.0

    @classmethod
    def for_accel(cls, accel: str, scale: float = 1.0) -> Deadlines:
        slow = 4.0 if accel == "tcg" else 1.0
        return cls(
            qmp_s=10 * scale,
            boot_s=30 * slow * scale,
            banner_s=10 * slow * scale,
            login_s=15 * slow * scale,
            powerdown_s=10 * slow * scale,
        )


def new_guest_dir(root: Path | None = None) -> Path:
    """A short private directory for one guest's sockets (unix socket paths max 107 bytes)."""
    root = root or runtime_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix="g-", dir=root))


def sweep_stale(root: Path | None = None) -> list[int]:
    """Kill QEMUs left by a vmlab that died without cleaning up; returns the pids killed."""
    root = root or runtime_dir()
    killed: list[int] = []
    if not root.is_dir():
        return killed
    for guest_dir in root.glob("g-*"):
        try:
            owner = int((guest_dir / "owner").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and alive(owner):
            continue
        pidfile = guest_dir / "qemu.pid"
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pid, cmdline = -1, b""
        if pid > 0 and str(pidfile).encode() in cmdline and alive(pid):
            log.warning("killing stale QEMU %d left behind in %s", pid, guest_dir)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        shutil.rmtree(guest_dir, ignore_errors=True)
    return killed


class QemuProcess:
    """One QEMU: started on enter, stopped on exit (powerdown, quit, then kill)."""

    def __init__(
        self,
        argv: list[str],
        *,
        guest_dir: Path,
        qmp_socket: Path,
        serial_log: Path,
        qemu_log: Path,
        deadlines: Deadlines,
        kind: Literal["vm", "daemon"] = "vm",
        pass_fds: Sequence[int] = (),
        accel: str = "tcg",
        acpi: bool = True,
        vhost_user: Sequence[VhostUserBackend] = (),
    ) -> None:
        self.vhost_user = tuple(vhost_user)  # named when QEMU stalls: it may wait on them
        self.pass_fds = tuple(pass_fds)
        self.acpi = acpi  # False: a vm stops with QMP quit, without the ACPI power button first
        self.accel = accel  # under kvm, QEMU's log is watched for KVM failures
        self.argv = argv
        self.kind = kind
        self.guest_dir = guest_dir
        self.qmp_socket = qmp_socket
        self.serial_log = serial_log
        self.qemu_log = qemu_log
        self.deadlines = deadlines
        self.process: ManagedProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the QEMU child, once started
        self.qmp: QEMUMonitorProtocol | None = None
        self.kvm: dict[str, Any] = {}
        self.started_at = 0.0

    # -- start -----------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        (self.guest_dir / "owner").write_text(str(os.getpid()))
        self.process = ManagedProcess(
            self.argv,
            log_path=self.qemu_log,
            what="QEMU" if self.kind == "vm" else Path(self.argv[0]).name,
            pass_fds=self.pass_fds,
            missing_hint="install QEMU: apt-get install qemu-system-x86",
        )
        self.process.start()
        self.proc = self.process.proc
        self.started_at = self.process.started_at
        self._connect_qmp()

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + self.deadlines.qmp_s
        while True:
            self._check_running("before QMP answered")
            if self.qmp_socket.exists():
                qmp = _Monitor(str(self.qmp_socket))
                try:
                    qmp.connect_within(max(deadline - time.monotonic(), 0.1))
                except TimeoutError:  # before OSError: TimeoutError is one
                    qmp.close()
                    self._check_running("before QMP answered")
                    self._stalled(
                        f"QMP accepted but did not answer within {self.deadlines.qmp_s:.0f} s"
                    )
                except (OSError, QMPError) as exc:
                    qmp.close()
                    log.debug("QMP not ready yet: %s", exc)
                else:
                    qmp.settimeout(self.deadlines.qmp_s)
                    self.qmp = qmp
                    if self.kind == "vm":
                        kvm = qmp.cmd("query-kvm")
                        self.kvm = dict(kvm) if isinstance(kvm, dict) else {}
                    return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"QMP did not answer within {self.deadlines.qmp_s:.0f} s", log=self.qemu_log
                )
            time.sleep(0.05)

    def fail(self, message: str) -> NoReturn:
        raise LaunchError(message, log=self.qemu_log)

    def _stalled(self, message: str) -> NoReturn:
        """QEMU is alive but its main loop does not answer: with vhost-user disks, it waits on
        their servers (QEMU talks to them synchronously while it sets up the devices)."""
        self._note_threads()
        if self.vhost_user:
            where = "; ".join(str(b) for b in self.vhost_user)
            message += f": QEMU is still setting up its devices, most likely waiting on {where}"
        hint = "QEMU's threads and where each waits are noted at the end of its log"
        raise LaunchError(
            message,
            log=self.qemu_log,
            hint=f"read the server's log; {hint}" if self.vhost_user else hint,
        )

    def _note_threads(self) -> None:
        if self.pid is not None:
            for line in thread_states(self.pid):
                self.note(line)

    def _explain_silence(self) -> str:
        if not self.vhost_user:
            return ""
        self._note_threads()
        why = blocked_on(self.vhost_user, self.qmp, timeout_s=2.0)
        if self.qmp is not None:
            self.qmp.settimeout(self.deadlines.qmp_s)
        return why

    def _check_running(self, when: str) -> None:
        if self.process is not None and not self.process.running():
            check_kvm(self.accel, self.qemu_log, when)
            self.process.check_running(when)

    # -- readiness -------------------------------------------------------------------------
    def wait_serial(
        self, marker: str, *, failed: str | None = None, timeout_s: float | None = None
    ) -> float:
        """Wait until `marker` appears on the serial console; returns seconds since launch."""
        return wait_marker(
            self.serial_log,
            marker,
            failed=failed,
            timeout_s=self.deadlines.boot_s if timeout_s is None else timeout_s,
            started_at=self.started_at,
            accel=self.accel,
            qemu_log=self.qemu_log,
            check_alive=self._check_running,
            explain_timeout=self._explain_silence,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- stop ------------------------------------------------------------------------------
    def _wait_exit(self, timeout_s: float) -> bool:
        assert self.process is not None
        return self.process.wait(timeout_s) is not None

    def stop(self) -> None:
        """Graceful first: ACPI power button (unless ``acpi`` is off), then QMP quit, then
        SIGTERM, then SIGKILL."""
        try:
            if self.process is not None and self.process.running():
                self._powerdown_then_quit()
            if self.process is not None and self.process.running():
                self.note("sending SIGTERM")
                self.process.stop()
        finally:
            if self.qmp is not None:
                try:
                    self.qmp.close()
                except (QMPError, OSError, EOFError) as exc:  # raised after QEMU quit
                    log.debug("closing QMP: %r", exc)
                self.qmp = None
            self.qmp_socket.unlink(missing_ok=True)

    def note(self, text: str) -> None:
        """Append a line of vmlab's own to the QEMU log, so the log tells the whole story."""
        with self.qemu_log.open("a") as fh:
            fh.write(f"vmlab: {time.monotonic() - self.started_at:.2f} s: {text}\n")

    def save_events(self) -> None:
        """QMP events seen so far (SHUTDOWN, POWERDOWN, BLOCK_IO_ERROR...) into the QEMU log."""
        if self.qmp is None:
            return
        try:
            events = self.qmp.get_events(wait=False)
        except (QMPError, OSError, EOFError) as exc:
            log.debug("reading QMP events: %r", exc)
            return
        for event in events:
            self.note(f"QMP event {event.get('event')} {event.get('data', {})}")

    def _powerdown_then_quit(self) -> None:
        if self.qmp is None:
            return
        try:
            self.save_events()
            if self.kind == "vm" and self.acpi:
                self.note("sending system_powerdown")
                self.qmp.cmd("system_powerdown")
                if self._wait_exit(self.deadlines.powerdown_s):
                    return
                log.info(
                    "guest did not power off within %.0f s; sending quit",
                    self.deadlines.powerdown_s,
                )
            self.note("sending quit")
            self.qmp.cmd("quit")
        except (QMPError, OSError, EOFError) as exc:  # quit closes the socket under us
            log.debug("QMP during shutdown: %r", exc)
        self._wait_exit(self.deadlines.quit_s)
