"""Processes that serve a guest's disks: qemu-storage-daemon for vhost-user-blk.

A sidecar starts before its guest and stops after it, on every path (the bench nests the
guest's context manager inside the sidecar's).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.render import DiskSource, render_argv, rendered_disk
from vmlab.results.rundir import CaseDir
from vmlab.spec import Disk

log = logging.getLogger(__name__)


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


@contextmanager
def qsd_export(
    qsd: str, disk: Disk, source: DiskSource, *, case_dir: CaseDir, deadlines: Deadlines
) -> Iterator[DiskSource]:
    """Serve `source` as a vhost-user-blk socket; yields the DiskSource QEMU connects to."""
    run_dir = new_guest_dir()
    try:
        socket = run_dir / "vhost-user.sock"
        qmp = run_dir / "qmp.sock"
        argv = render_qsd(
            qsd, disk, source, socket=socket, qmp_socket=qmp, pidfile=run_dir / "qemu.pid"
        )
        case_dir.write_json(f"qsd-{disk.name}.argv.json", argv)
        case_dir.write_text(f"qsd-{disk.name}.argv.sh", shlex.join(argv) + "\n")
        # qemu-storage-daemon has no guest to power down: QMP quit is its graceful stop.
        sidecar_deadlines = Deadlines(
            qmp_s=deadlines.qmp_s, boot_s=0, banner_s=0, login_s=0, powerdown_s=0, quit_s=5
        )
        with QemuProcess(
            argv,
            guest_dir=run_dir,
            qmp_socket=qmp,
            serial_log=run_dir / "none",
            qemu_log=case_dir.file(f"qsd-{disk.name}.log"),
            deadlines=sidecar_deadlines,
            kind="daemon",
        ) as proc:
            deadline = time.monotonic() + deadlines.qmp_s
            while not socket.exists():
                if time.monotonic() > deadline:
                    proc.fail(f"qemu-storage-daemon did not create {socket}")
                time.sleep(0.02)
            log.info("qemu-storage-daemon %s serves %s on %s", proc.pid, source.path, socket)
            yield DiskSource(path=source.path, format=source.format, socket=socket)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
