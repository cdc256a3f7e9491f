"""qemu-storage-daemon serving a disk as a vhost-user-blk export (``served_by: qsd``).

The daemon starts before its guest and stops after it, on every path (the case's ExitStack
closes the guest first). Its argv comes from ``templates/qemu/qsd.argv.j2``, the same
``-blockdev`` chain QEMU itself would open; its output (stderr included) is the case's
``qsd-DISK.log``, with vmlab's own notes on when the export was ready.

QEMU starts only once the export is proven ready without touching its socket: qsd's QMP
``query-block-exports`` lists it (an export is listed once its socket listens) and the socket
is there. A probe connection is out of the question: qsd 7.2's vhost-user server serves one
client at a time, and QEMU, queued behind a probe, would wait without a word. While the guest
runs, a watcher fails the case at once if the daemon exits.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from vmlab.errors import HostError, LaunchError, VmlabError
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.proc import Deadline
from vmlab.render import render_argv
from vmlab.render.model import DiskSource
from vmlab.render.qemu import rendered_disk
from vmlab.results.rundir import CaseDir
from vmlab.spec import Disk
from vmlab.storage.base import Preview, ServeContext
from vmlab.storage.ceph import write_key_file

log = logging.getLogger(__name__)

SOCKET = "vhost-user.sock"


def render_qsd(
    qsd: str, disk: Disk, source: DiskSource, *, socket: Path, qmp_socket: Path, pidfile: Path
) -> list[str]:
    return render_argv(
        "qemu/qsd.argv.j2",
        qsd=qsd,
        d=rendered_disk(0, disk, source),
        disk=disk,
        iothread=disk.iothread is True,
        socket=socket,
        qmp_socket=qmp_socket,
        pidfile=pidfile,
    )


def export_id(disk: Disk) -> str:
    return f"exp-{disk.name}"  # as templates/qemu/qsd.argv.j2 names it


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def export_listed(exports: object, name: str) -> bool:
    """Whether QMP ``query-block-exports`` lists the export ``name`` (and not shutting down)."""
    return isinstance(exports, list) and any(
        isinstance(e, dict) and e.get("id") == name and not e.get("shutting-down") for e in exports
    )


def wait_export_ready(
    query: Callable[[], object],
    name: str,
    socket: Path,
    *,
    timeout_s: float,
    log_path: Path,
    check_running: Callable[[], None] = lambda: None,
    poll_s: float = 0.02,
) -> float:
    """Wait until ``query()`` (QMP ``query-block-exports``) lists the export and its socket
    exists; seconds waited. Never connects to the socket (see the module docstring).
    ``check_running`` raises when the daemon is gone; LaunchError, naming the socket and the
    log, when ``timeout_s`` passes first."""
    start = time.monotonic()
    deadline = Deadline(timeout_s)
    while True:
        check_running()
        listed = export_listed(query(), name)
        if listed and is_socket(socket):
            return time.monotonic() - start
        if deadline.expired():
            why = f"{socket} is not a socket" if listed else "query-block-exports does not list it"
            raise LaunchError(
                f"qemu-storage-daemon did not make its vhost-user export {name} ready within "
                f"{timeout_s:.0f} s: {why} (socket {socket})",
                log=log_path,
                hint="read the qemu-storage-daemon log",
            )
        time.sleep(poll_s)


def key_file(run_dir: Path, disk: Disk) -> Path:
    return run_dir / f"rbd-{disk.name}.key"


def _argv(qsd: str, disk: Disk, source: DiskSource, run_dir: Path) -> list[str]:
    return render_qsd(
        qsd,
        disk,
        source,
        socket=run_dir / SOCKET,
        qmp_socket=run_dir / "qmp.sock",
        pidfile=run_dir / "qemu.pid",
    )


def _watch(proc: QemuProcess, disk: Disk, qsd_log: Path) -> VmlabError | None:
    if proc.process is None or proc.process.running() or proc.proc is None:
        return None
    return LaunchError(
        f"disk {disk.name}: qemu-storage-daemon exited with status {proc.proc.returncode} "
        f"while the guest ran: {proc.process.log_tail() or 'no output'}",
        log=qsd_log,
    )


@contextmanager
def qsd_export(
    qsd: str,
    disk: Disk,
    source: DiskSource,
    *,
    case_dir: CaseDir,
    deadlines: Deadlines,
    watchers: list[Callable[[], VmlabError | None]] | None = None,
) -> Iterator[DiskSource]:
    """Serve `source` as a vhost-user-blk socket; yields the DiskSource QEMU connects to.
    With ``watchers``, one is added that reports the daemon's death."""
    run_dir = new_guest_dir()
    try:
        if source.rbd is not None:
            source = replace(source, rbd=write_key_file(source.rbd, key_file(run_dir, disk)))
        argv = _argv(qsd, disk, source, run_dir)
        case_dir.write_json(f"qsd-{disk.name}.argv.json", argv)
        case_dir.write_text(f"qsd-{disk.name}.argv.sh", shlex.join(argv) + "\n")
        # qemu-storage-daemon has no guest to power down: QMP quit is its graceful stop.
        sidecar_deadlines = Deadlines(
            qmp_s=deadlines.qmp_s, boot_s=0, banner_s=0, login_s=0, powerdown_s=0, quit_s=5
        )
        socket = run_dir / SOCKET
        qsd_log = case_dir.file(f"qsd-{disk.name}.log")
        with QemuProcess(
            argv,
            guest_dir=run_dir,
            qmp_socket=run_dir / "qmp.sock",
            serial_log=run_dir / "none",
            qemu_log=qsd_log,
            deadlines=sidecar_deadlines,
            kind="daemon",
        ) as proc:
            qmp = proc.qmp
            assert qmp is not None  # QemuProcess connected it, or raised

            def running() -> None:
                if proc.process is not None:
                    proc.process.check_running("before its export was ready")

            waited_s = wait_export_ready(
                lambda: qmp.cmd("query-block-exports"),
                export_id(disk),
                socket,
                timeout_s=deadlines.qmp_s,
                log_path=qsd_log,
                check_running=running,
            )
            proc.note(f"export {export_id(disk)} ready on {socket} ({waited_s:.2f} s after QMP)")
            if watchers is not None:
                watchers.append(lambda: _watch(proc, disk, qsd_log))
            log.info("qemu-storage-daemon %s serves %s on %s", proc.pid, source.path, socket)
            yield DiskSource(
                path=source.path, format=source.format, socket=socket, server_log=qsd_log
            )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class QsdServer:
    name = "qsd"

    def preview(self, disk: Disk, source: DiskSource) -> Preview:
        run_dir = Path(f"<sidecar-{disk.name}>")
        if source.rbd is not None:
            source = replace(source, rbd=replace(source.rbd, key_file=key_file(run_dir, disk)))
        argv = _argv("qemu-storage-daemon", disk, source, run_dir)
        return Preview(
            source=replace(source, socket=run_dir / SOCKET),
            title="qemu-storage-daemon, started first",
            argv=tuple(argv),
        )

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        if ctx.qsd is None:
            raise HostError(
                "qemu-storage-daemon is not installed", hint="apt-get install qemu-utils"
            )
        return stack.enter_context(
            qsd_export(
                ctx.qsd,
                disk,
                source,
                case_dir=ctx.case_dir,
                deadlines=ctx.deadlines,
                watchers=ctx.watchers,
            )
        )
