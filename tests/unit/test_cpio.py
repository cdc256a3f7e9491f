from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmlab.errors import ResultError
from vmlab.guest.cpio import NewcWriter, iter_entries


def _archive(tmp_path: Path) -> bytes:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 41 + b"tail")  # not a multiple of 4
    source.chmod(0o750)
    buf = io.BytesIO()
    with NewcWriter(buf, mtime=1_700_000_000) as cpio:
        cpio.add_dir("usr/bin")
        cpio.add_symlink("bin", "usr/bin")
        cpio.add_bytes("/init", b"#!/bin/sh\necho hi\n", 0o755)
        cpio.add_file("usr/bin/tool", source)
        cpio.add_bytes("etc/deep/nested/file", b"x", 0o600)  # parents created on the way
        cpio.add_chardev("dev/console", 5, 1)
        cpio.add_bytes("empty", b"")
    return buf.getvalue()


def test_round_trip(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    assert len(data) % 512 == 0
    entries = {e.name: e for e in iter_entries(io.BytesIO(data))}
    assert list(entries)[:3] == ["usr", "usr/bin", "bin"]
    assert entries["bin"].is_symlink and entries["bin"].data == b"usr/bin"
    assert entries["init"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(entries["init"].mode) == 0o755
    tool = entries["usr/bin/tool"]
    assert tool.is_file and tool.data == (tmp_path / "source.bin").read_bytes()
    assert stat.S_IMODE(tool.mode) == 0o750  # the source's mode by default
    assert tool.mtime == 1_700_000_000 and tool.uid == 0 and tool.gid == 0
    for parent in ("etc", "etc/deep", "etc/deep/nested"):
        assert entries[parent].is_dir
    names = list(entries)
    assert names.index("etc/deep/nested") < names.index("etc/deep/nested/file")
    console = entries["dev/console"]
    assert console.is_chardev and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert entries["empty"].size == 0
    assert len({e.ino for e in entries.values()}) == len(entries)


def test_deterministic(tmp_path: Path) -> None:
    assert _archive(tmp_path) == _archive(tmp_path)


def test_every_header_is_4_byte_aligned(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    # Each member starts with the magic at a 4-byte boundary; find them all by scanning.
    offsets = [i for i in range(0, len(data) - 6, 4) if data[i : i + 6] == b"070701"]
    assert len(offsets) == len(list(iter_entries(io.BytesIO(data)))) + 1  # + trailer


def test_rejects_duplicates_and_dotdot() -> None:
    cpio = NewcWriter(io.BytesIO())
    cpio.add_bytes("a", b"1")
    with pytest.raises(ValueError, match="duplicate"):
        cpio.add_bytes("/a", b"2")
    with pytest.raises(ValueError, match=r"\.\."):
        cpio.add_bytes("x/../../etc/passwd", b"")
    assert "a" in cpio and "/a" in cpio and "b" not in cpio


def test_truncated_archive_is_an_error(tmp_path: Path) -> None:
    data = _archive(tmp_path)
    with pytest.raises(ValueError, match="truncated"):
        list(iter_entries(io.BytesIO(data[:300])))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing: apt-get install cpio")
def test_host_cpio_agrees(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(_archive(tmp_path))
    listing = (
        subprocess.run(
            ["cpio", "-it", "--quiet"],
            stdin=archive.open("rb"),
            capture_output=True,
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .split()
    )
    assert listing == [e.name for e in iter_entries(archive.open("rb"))]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "init", "usr/bin/tool", "bin"],
        stdin=archive.open("rb"),
        cwd=out,
        check=True,
        timeout=30,
    )
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "usr/bin/tool").read_bytes() == (tmp_path / "source.bin").read_bytes()
    assert (out / "bin").is_symlink() and str((out / "bin").readlink()) == "usr/bin"


class _CountingSink(io.RawIOBase):
    """Counts what is written and keeps nothing (a 4 GiB member must not land in memory)."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        return len(data)


def test_member_of_4_gib_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # newc stores the size in 8 hex digits: 4 GiB needs nine and would corrupt the archive.
    big = tmp_path / "big.img"
    with big.open("wb") as fh:
        fh.truncate(1 << 32)  # sparse: no 4 GiB of disk or memory
    sink = _CountingSink()
    cpio = NewcWriter(sink)  # type: ignore[arg-type]
    with pytest.raises(ResultError, match=r"usr/lib/big\.img .*4294967296") as info:
        cpio.add_file("usr/lib/big.img", big)
    assert info.value.path == big
    assert sink.count == 0 and "usr/lib/big.img" not in cpio and cpio.members == 0
    cpio.add_bytes("after", b"still usable")  # the refusal left the archive consistent
    cpio.close()


def test_header_fields_that_do_not_fit_8_hex_digits_are_refused() -> None:
    with pytest.raises(ValueError, match="mtime"):
        NewcWriter(io.BytesIO(), mtime=1 << 32)
