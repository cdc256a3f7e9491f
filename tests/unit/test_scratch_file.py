"""A run's scratch file: zeros written to every block, not fallocated (unwritten) extents."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.spec.backends import FileBackend
from vmlab.storage.backing import RunBacking, write_zeros

MIB = 1 << 20


def _unwritten_extents(path: Path) -> int | None:
    """Extents the file system still has to write (FIEMAP's "unwritten"), or None where
    filefrag cannot tell (no filefrag, no FIEMAP)."""
    if shutil.which("filefrag") is None:
        return None
    done = subprocess.run(
        ["filefrag", "-v", str(path)], check=False, capture_output=True, text=True
    )
    if done.returncode != 0 or "found" not in done.stdout:  # "N extent(s) found"
        return None
    return sum("unwritten" in line for line in done.stdout.splitlines())


def _shows_unwritten(tmp_path: Path) -> bool:
    """Whether filefrag shows this file system's unwritten extents: a fallocated control
    file has some (else checking that a file has none would prove nothing)."""
    control = tmp_path / "fallocated.raw"
    with control.open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, 8 * MIB)
    try:
        return bool(_unwritten_extents(control))
    finally:
        control.unlink()


@pytest.mark.parametrize("size", [0, 4096, 8 * MIB + 100, 5000])
def test_every_byte_is_a_written_zero(tmp_path: Path, size: int) -> None:
    path = tmp_path / "data.raw"
    write_zeros(path, size)
    assert path.stat().st_size == size
    assert path.stat().st_blocks * 512 >= size  # allocated, not sparse
    assert path.read_bytes() == bytes(size)
    if _shows_unwritten(tmp_path):  # ext4, xfs: what a fallocated file would have
        assert _unwritten_extents(path) == 0


def test_without_o_direct_the_zeros_go_through_the_page_cache(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    path = shm / f"vmlab-test-{os.getpid()}.raw"
    try:
        write_zeros(path, 3 * MIB + 1)
        assert path.read_bytes() == bytes(3 * MIB + 1)
    finally:
        path.unlink(missing_ok=True)


def test_a_scratch_file_that_does_not_fit_is_a_host_error_and_left_out(tmp_path: Path) -> None:
    backing = RunBacking(tmp_path / "scratch")
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    backend = FileBackend(type="file", format="raw", size="1M")
    backing.root.mkdir()
    target = backing.root / "data-1M.raw"
    target.symlink_to(full)  # every write fails with ENOSPC
    with pytest.raises(HostError, match="cannot write the 1M scratch file") as info:
        backing.file("data", backend)
    assert "VMLAB_SCRATCH" in (info.value.hint or "")
    assert not target.exists() and not target.is_symlink()
