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
    if done.returncode != 0 or "ext:" not in done.stdout:
        return None
    return sum("unwritten" in line for line in done.stdout.splitlines())


@pytest.mark.parametrize("size", [0, 4096, 8 * MIB + 100, 5000])
def test_every_byte_is_a_written_zero(tmp_path: Path, size: int) -> None:
    path = tmp_path / "data.raw"
    write_zeros(path, size)
    assert path.stat().st_size == size
    assert path.stat().st_blocks * 512 >= size  # allocated, not sparse
    assert path.read_bytes() == bytes(size)
    unwritten = _unwritten_extents(path)
    if unwritten is not None:
        assert unwritten == 0


def test_a_fallocated_file_would_have_unwritten_extents(tmp_path: Path) -> None:
    """What the test above guards against, shown on this file system (where it has them)."""
    path = tmp_path / "fallocated.raw"
    with path.open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, 8 * MIB)
    unwritten = _unwritten_extents(path)
    if unwritten is None or unwritten == 0:
        pytest.skip("this file system has no unwritten extents (or filefrag cannot tell)")
    assert unwritten > 0


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
