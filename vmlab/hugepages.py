"""2 MiB hugepages: what the host has, a run's own reservation, and private hugetlbfs mounts.

Guests with ``memory_backend: hugepages`` take their RAM from the kernel's hugepage pool
(QEMU's ``memory-backend-memfd,hugetlb=on`` needs no mount); SPDK's DPDK maps its memory from
files on a hugetlbfs mount and refuses to start without one.

A run reserves what it needs on top of what the pool holds (:func:`reserved`: ``nr_hugepages``
raised by exactly that many, and lowered by exactly that many when the run ends, on every
path), so it never takes pages someone else reserved, and gives back only its own. Both the
raise and the give-back happen under a lock, as ``nr_hugepages`` is one number for the host.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import HostError
from vmlab.proc import run

log = logging.getLogger(__name__)

PAGE_MIB = 2
SYSFS = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
MOUNT_TIMEOUT_S = 30.0


def pages_for(mib: int) -> int:
    return -(-mib // PAGE_MIB)


@dataclass(frozen=True)
class PoolState:
    total: int  # nr_hugepages
    free: int  # not handed out yet, including pages mappings have reserved
    reserved: int  # promised to mappings that have not touched them yet

    @property
    def available(self) -> int:
        return max(0, self.free - self.reserved)


def _read(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def pool_state(sysfs: Path = SYSFS) -> PoolState:
    return PoolState(
        total=_read(sysfs / "nr_hugepages"),
        free=_read(sysfs / "free_hugepages"),
        reserved=_read(sysfs / "resv_hugepages"),
    )


def can_reserve(sysfs: Path = SYSFS) -> bool:
    """vmlab may raise the pool itself (root, or a writable nr_hugepages)."""
    return os.access(sysfs / "nr_hugepages", os.W_OK)


def reserve_command(pages: int) -> str:
    return f"echo {pages} > {SYSFS / 'nr_hugepages'}"


@contextmanager
def _pool_lock() -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / "vmlab-hugepages.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _add(sysfs: Path, delta: int) -> int:
    """Change nr_hugepages by ``delta``; returns by how much it really changed."""
    with _pool_lock():
        before = _read(sysfs / "nr_hugepages")
        (sysfs / "nr_hugepages").write_text(f"{max(0, before + delta)}\n")
        return _read(sysfs / "nr_hugepages") - before


@contextmanager
def reserved(pages: int, *, sysfs: Path = SYSFS) -> Iterator[int]:
    """``pages`` more 2 MiB hugepages in the pool while the block runs; yields how many vmlab
    added. Without the right to raise the pool, the pages must be available already (HostError
    otherwise, naming the command). HostError too when the kernel cannot find the memory."""
    if pages <= 0:
        yield 0
        return
    if not can_reserve(sysfs):
        state = pool_state(sysfs)
        if state.available < pages:
            raise HostError(
                f"the run needs {pages} free 2 MiB hugepages, the host has {state.available} "
                f"available of {state.total}",
                hint=f"as root: {reserve_command(state.total + pages - state.available)}; "
                "or run vmlab as root and it reserves them for the run",
            )
        yield 0
        return
    added = _add(sysfs, pages)
    try:
        if added < pages:
            raise HostError(
                f"the kernel gave {added} of the {pages} 2 MiB hugepages the run needs "
                "(not enough contiguous free memory)",
                hint="free memory (echo 3 > /proc/sys/vm/drop_caches; echo 1 > "
                "/proc/sys/vm/compact_memory) and try again, or reserve them at boot "
                "(hugepages=N on the kernel command line)",
            )
        log.info("reserved %d hugepages for the run", added)
        yield added
    finally:
        if added > 0:
            given = -_add(sysfs, -added)
            log.info("gave back %d hugepages", given)


def hugetlbfs_mounts(mounts: Path = Path("/proc/self/mounts")) -> list[Path]:
    """Mounted hugetlbfs file systems of 2 MiB pages (the default size here)."""
    found = []
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "hugetlbfs":
            options = fields[3].split(",")
            if not any(o.startswith("pagesize=") and o != "pagesize=2M" for o in options):
                found.append(Path(fields[1].replace("\\040", " ")))
    return found


def can_mount() -> bool:
    return os.geteuid() == 0


@contextmanager
def hugetlbfs_mount(path: Path) -> Iterator[Path]:
    """A private hugetlbfs at ``path`` (made, mounted, unmounted and removed again): files a
    killed process left on it go with the unmount, and no one else's mount is touched."""
    path.mkdir(mode=0o700)
    try:
        run(
            ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "nodev", str(path)],
            timeout_s=MOUNT_TIMEOUT_S,
            hint="mounting hugetlbfs needs root",
        )
        try:
            yield path
        finally:
            done = run(["umount", str(path)], timeout_s=MOUNT_TIMEOUT_S, check=False)
            if not done.ok:  # still busy: detach it now, the kernel frees it when unused
                log.warning("umount %s: %s; detaching it", path, done.err.strip())
                run(["umount", "-l", str(path)], timeout_s=MOUNT_TIMEOUT_S, check=False)
    finally:
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove %s: %s", path, exc)
