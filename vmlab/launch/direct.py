"""The QEMU launcher: render the argv, save it, run QemuProcess, wait for the serial marker."""

from __future__ import annotations

import logging
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vmlab.errors import LaunchError
from vmlab.launch.base import LaunchRequest, needs_acpi
from vmlab.launch.pinning import apply_pinning
from vmlab.launch.qemu import QemuProcess, VhostUserBackend, new_guest_dir
from vmlab.render.model import GuestRuntime
from vmlab.render.qemu import nic_plans, render_qemu

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
G = TypeVar("G")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class QemuGuest:
    ssh_host: str
    ssh_port: int
    started_at: float
    timings: dict[str, float] = field(default_factory=dict)
    accel_info: dict[str, Any] = field(default_factory=dict)


def _port_taken(exc: LaunchError) -> bool:
    text = exc.log.read_text(errors="replace") if exc.log and exc.log.exists() else ""
    return "host forwarding" in text or "hostfwd" in text


@contextmanager
def retry_port(
    launch_once: Callable[[str], AbstractContextManager[G]],
    *,
    port_taken: Callable[[LaunchError], bool] = _port_taken,
) -> Iterator[G]:
    """Start a guest, again with a new SSH port (and ``.N`` artifact suffix) if the one picked
    was taken meanwhile. Only the start is retried: an error raised while the caller uses the
    guest goes to the caller as it is, after the guest is stopped."""
    with ExitStack() as stack:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            suffix = "" if attempt == 1 else f".{attempt}"
            try:
                guest = stack.enter_context(launch_once(suffix))
                break
            except LaunchError as exc:
                if attempt == PORT_ATTEMPTS or not port_taken(exc):
                    raise
                log.info("SSH port was taken by another process; trying another one")
        yield guest


class QemuLauncher:
    """Runs qemu-system-x86_64 directly. Retries with a new port if the one picked was taken."""

    name = "qemu"
    host_side_nics = False

    def __init__(self, qemu: str) -> None:
        self.qemu = qemu

    @contextmanager
    def launch(self, request: LaunchRequest) -> Iterator[QemuGuest]:
        with retry_port(lambda suffix: self._launch_once(request, suffix)) as guest:
            yield guest

    @contextmanager
    def _launch_once(self, request: LaunchRequest, suffix: str) -> Iterator[QemuGuest]:
        case_dir = request.case_dir
        guest_dir = new_guest_dir()
        try:
            runtime = GuestRuntime(
                qmp_socket=guest_dir / "qmp.sock",
                serial_log=case_dir.file(f"serial{suffix}.log"),
                pidfile=guest_dir / "qemu.pid",
                ssh_port=free_port(),
                nics=nic_plans(request.case.variant.guest, request.nics),
            )
            rendered = render_qemu(
                request.case,
                qemu=self.qemu,
                accel=request.accel,
                boot=request.boot,
                disks=request.disks,
                runtime=runtime,
            )
            # Saved before it runs: a guest that never boots still leaves its argv behind.
            case_dir.write_json(f"argv{suffix}.json", rendered.argv)
            case_dir.write_text(f"argv{suffix}.sh", shlex.join(rendered.argv) + "\n")
            with QemuProcess(
                rendered.argv,
                guest_dir=guest_dir,
                qmp_socket=runtime.qmp_socket,
                serial_log=runtime.serial_log,
                qemu_log=case_dir.file(f"qemu{suffix}.log"),
                deadlines=request.deadlines,
                pass_fds=[fd for nic in request.nics for fd in nic.fds],
                accel=request.accel,
                acpi=needs_acpi(request.boot),
                vhost_user=[
                    VhostUserBackend(d.socket, d.server_log)
                    for d in request.disks.values()
                    if d.socket is not None
                ],
            ) as vm:
                guest = QemuGuest("127.0.0.1", runtime.ssh_port, vm.started_at)
                guest.timings["qmp_s"] = time.monotonic() - vm.started_at
                guest.accel_info = dict(vm.kvm)
                case_dir.write_json(f"kvm{suffix}.json", vm.kvm)
                if vm.qmp is not None:
                    pinned = apply_pinning(vm.qmp, request.case.variant.guest)
                    if pinned["vcpus"] or pinned["iothreads"]:
                        case_dir.write_json(f"pinning{suffix}.json", pinned)
                guest.timings["serial_ready_s"] = vm.wait_serial(
                    request.ready_marker, failed=request.failed_marker
                )
                yield guest
        finally:
            shutil.rmtree(guest_dir, ignore_errors=True)
