"""qemu-storage-daemon serving a disk as a vhost-user-blk export (``served_by: qsd``).

The daemon starts before its guest and stops after it, on every path (the case's ExitStack
closes the guest first). Its argv comes from ``templates/qemu/qsd.argv.j2``, the same
``-blockdev`` chain QEMU itself would open.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from vmlab.errors import HostError
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


@contextmanager
def qsd_export(
    qsd: str, disk: Disk, source: DiskSource, *, case_dir: CaseDir, deadlines: Deadlines
) -> Iterator[DiskSource]:
    """Serve `source` as a vhost-user-blk socket; yields the DiskSource QEMU connects to."""
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
        with QemuProcess(
            argv,
            guest_dir=run_dir,
            qmp_socket=run_dir / "qmp.sock",
            serial_log=run_dir / "none",
            qemu_log=case_dir.file(f"qsd-{disk.name}.log"),
            deadlines=sidecar_deadlines,
            kind="daemon",
        ) as proc:
            deadline = Deadline(deadlines.qmp_s)
            while not socket.exists():
                if deadline.expired():
                    proc.fail(f"qemu-storage-daemon did not create {socket}")
                time.sleep(0.02)
            log.info("qemu-storage-daemon %s serves %s on %s", proc.pid, source.path, socket)
            yield DiskSource(path=source.path, format=source.format, socket=socket)
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
            qsd_export(ctx.qsd, disk, source, case_dir=ctx.case_dir, deadlines=ctx.deadlines)
        )
