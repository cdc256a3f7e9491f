"""Where a disk's bytes live for a case: scratch files, per-guest qcow2 overlays, host block
devices, RBD images (and malloc disks, which live inside the SPDK target and need nothing here).

One dispatch (:func:`disk_source`) over the backend types, and two backings that name things the
same way: :class:`RunBacking` creates what a run needs (and removes it when the run ends),
:class:`PreviewBacking` only names it, for `vmlab render`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from vmlab.errors import HostError
from vmlab.host import scratch_root
from vmlab.plan import Case
from vmlab.proc import run
from vmlab.render.model import DiskSource
from vmlab.spec import BlockBackend, Disk, FileBackend, MallocBackend, RbdBackend
from vmlab.storage.ceph import CephSessions, preview_rbd

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT_S = 120.0


class Backing(Protocol):
    def file(self, disk_name: str, backend: FileBackend) -> Path:
        """The disk's base file (a path the spec gave, or a scratch file of the run)."""
        ...

    def overlay(self, case_id: str, disk_name: str, base: Path, base_format: str) -> Path:
        """A qcow2 overlay for one guest over ``base``."""
        ...

    def block(self, path: Path) -> Path: ...

    def rbd(self, disk_name: str, backend: RbdBackend) -> DiskSource: ...


def disk_source(backing: Backing, case: Case, disk: Disk) -> DiskSource:
    """Where the disk's bytes are on this host, before any server serves them."""
    backend = disk.backend
    if isinstance(backend, MallocBackend):  # RAM inside the SPDK target: nothing on the host
        return DiskSource(path=Path(f"malloc:{backend.size}"), format="raw", protocol="malloc")
    if isinstance(backend, RbdBackend):
        return backing.rbd(disk.name, backend)
    if isinstance(backend, BlockBackend):
        return DiskSource(path=backing.block(backend.path), format="raw", protocol="host_device")
    base = backing.file(disk.name, backend)
    if backend.overlay:
        overlay = backing.overlay(case.id, disk.name, base, backend.format)
        return DiskSource(path=overlay, format="qcow2")
    return DiskSource(path=base, format=backend.format)


def scratch_file(root: Path, disk_name: str, backend: FileBackend) -> Path:
    return backend.path or root / f"{disk_name}-{backend.size}.{backend.format}"


def overlay_file(root: Path, case_id: str, disk_name: str) -> Path:
    return root / case_id / f"{disk_name}.overlay.qcow2"


def qemu_img(*args: str) -> None:
    run(
        ["qemu-img", *args],
        timeout_s=QEMU_IMG_TIMEOUT_S,
        missing_hint="apt-get install qemu-utils",
    )


def check_block_device(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise HostError(
            f"block device {path} does not exist",
            hint="check backend.path; for krbd, map the image first",
        ) from exc
    if not stat.S_ISBLK(mode):
        raise HostError(
            f"{path} is not a block device", hint="use backend type file for regular files"
        )


class RunBacking:
    """What a run's disks need, made on first use: shared scratch bases, per-guest overlays,
    RBD images (and the micro cluster). :meth:`cleanup` removes all of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: set[Path] = set()
        self.ceph = CephSessions(run_id=root.name)

    def file(self, disk_name: str, backend: FileBackend) -> Path:
        path = scratch_file(self.root, disk_name, backend)
        if backend.path is None and path not in self.made:
            self.root.mkdir(parents=True, exist_ok=True)
            _create(path, backend)
            self.made.add(path)
        return path

    def overlay(self, case_id: str, disk_name: str, base: Path, base_format: str) -> Path:
        path = overlay_file(self.root, case_id, disk_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a resumed case starts from the base again
        qemu_img(
            "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", base_format, str(path)
        )
        return path

    def block(self, path: Path) -> Path:
        check_block_device(path)
        return path

    def rbd(self, disk_name: str, backend: RbdBackend) -> DiskSource:
        return self.ceph.image(disk_name, backend)

    def cleanup(self) -> None:
        try:
            self.ceph.cleanup()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


ZERO_CHUNK = 4 << 20


def _create(path: Path, backend: FileBackend) -> None:
    if backend.format == "qcow2":
        qemu_img("create", "-q", "-f", "qcow2", str(path), str(backend.size_bytes))
        return
    log.info("writing the %s scratch file %s (zeros, once per run)", backend.size, path)
    try:
        write_zeros(path, backend.size_bytes)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise HostError(
            f"cannot write the {backend.size} scratch file {path}: {exc.strerror or exc}",
            hint="scratch disks go under $VMLAB_SCRATCH (default: the temp folder); point it "
            "at a file system with room (not tmpfs), or make the disk's size smaller",
        ) from exc


def write_zeros(path: Path, size: int) -> None:
    """Create ``path`` holding ``size`` bytes of zeros, written (O_DIRECT where the file
    system has it, else through the page cache and fsync'd).

    Written, not fallocated: a fallocated extent is *unwritten* until written, so the guest's
    reads of it cost the host no I/O at all (ext4 returns zeros), and its first write to each
    block converts the extent in the host's journal while fio measures. The few thousand
    extents that a minute of 4k random writes splits a fallocated 1 GiB file into also made
    deleting it take 4.4 s on this machine's ext4 (mounted with online discard: one discard
    each), against 0.2 s for a written one; writing it takes 0.8 s."""
    try:
        _write_zeros(path, size, direct=True)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _write_zeros(path, size, direct=False)  # no O_DIRECT on this file system (tmpfs)


def _write_zeros(path: Path, size: int, *, direct: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    body = size - size % 4096 if direct else size  # O_DIRECT writes whole blocks
    fd = os.open(path, flags | (os.O_DIRECT if direct else 0), 0o644)
    try:
        # page-aligned, as O_DIRECT needs (a slice of the mmap itself would be a copy)
        with mmap.mmap(-1, ZERO_CHUNK) as chunk, memoryview(chunk) as zeros:
            offset = 0
            while offset < body:
                offset += os.pwrite(fd, zeros[: min(ZERO_CHUNK, body - offset)], offset)
    finally:
        os.close(fd)
    if direct and offset == size:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # the tail, and what went to the cache
    try:
        if offset < size:
            os.pwrite(fd, bytes(size - offset), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def run_backing(run_id: str, cases: Sequence[Case] = ()) -> Iterator[RunBacking]:
    """The run's backing stores, with the RBD pools ``cases`` name settled first (made on the
    micro cluster, or a missing one on a user's cluster refused): before any guest starts."""
    backing = RunBacking(scratch_root() / run_id)
    try:
        backing.ceph.prepare(cases)
        yield backing
    finally:
        backing.cleanup()


class PreviewBacking:
    """The names a run would use, creating nothing."""

    def __init__(self, root: Path = Path("<scratch>")) -> None:
        self.root = root

    def file(self, disk_name: str, backend: FileBackend) -> Path:
        return scratch_file(self.root, disk_name, backend)

    def overlay(self, case_id: str, disk_name: str, base: Path, base_format: str) -> Path:
        return overlay_file(self.root, case_id, disk_name)

    def block(self, path: Path) -> Path:
        return path

    def rbd(self, disk_name: str, backend: RbdBackend) -> DiskSource:
        return preview_rbd(disk_name, backend, run_id=self.root.name)
