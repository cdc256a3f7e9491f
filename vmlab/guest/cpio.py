"""A newc ("070701") cpio writer and reader, as the Linux initramfs unpacker expects it.

Pure Python: no ``cpio`` binary and no root (device nodes are only headers). Output is
deterministic: fixed mtime, uid/gid 0, inode numbers in write order. Parent directories are
added automatically, because the kernel's unpacker does not create them. Every header field is
eight hex digits, so a member of 4 GiB or more cannot be stored: it is refused (ResultError)
before any of it is written.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from vmlab.errors import ResultError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_CHUNK = 1 << 20
_FIELD_MAX = 0xFFFFFFFF  # a header field is 8 hex digits
MAX_MEMBER_BYTES = _FIELD_MAX


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _clean(name: str) -> str:
    """Archive names are relative ('usr/bin/x'); '/' and '.' name the root."""
    parts = [p for p in PurePosixPath("/", name).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"cpio member name must not contain '..': {name!r}")
    return "/".join(parts) or "."


def _check_size(name: str, size: int, source: Path | None = None) -> None:
    """Refuse a member whose size needs more than the 8 hex digits of the header's field
    (written anyway, the ninth digit shifts every later field: a corrupt archive)."""
    if size > MAX_MEMBER_BYTES:
        raise ResultError(
            f"cpio member {_clean(name)} is {size} bytes: the newc format stores at most "
            f"{MAX_MEMBER_BYTES} bytes (4 GiB - 1) per member",
            path=source,
            hint="an initramfs carries binaries, libraries and modules: check what was added",
        )


@dataclass(frozen=True)
class Entry:
    """One member read back from an archive (for tests and inspection)."""

    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    rdevmajor: int
    rdevminor: int
    ino: int
    data: bytes

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_chardev(self) -> bool:
        return stat.S_ISCHR(self.mode)


class NewcWriter:
    """Streams newc members into ``out``; call :meth:`close` (or use ``with``) to write the
    trailer. Every path may be given with or without a leading '/'."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        if not 0 <= mtime <= _FIELD_MAX:
            raise ValueError(f"cpio mtime {mtime} does not fit the header's 8 hex digits")
        self._out = out
        self._mtime = mtime
        self._ino = 0
        self._names: set[str] = set()
        self._dirs: set[str] = {"."}
        self._closed = False
        self.bytes_written = 0

    def __enter__(self) -> NewcWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed and exc[0] is None:
            self.close()

    def __contains__(self, name: str) -> bool:
        return _clean(name) in self._names

    @property
    def members(self) -> int:
        """Members written so far (the trailer not counted)."""
        return len(self._names)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def _header(
        self, name: str, mode: int, size: int, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._closed:
            raise ValueError("cpio archive already closed")
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            self._mtime,
            size,
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        if any(not 0 <= f <= _FIELD_MAX for f in fields):  # callers check sizes with context
            raise ValueError(f"cpio header field out of range for {name}: {fields}")
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._write(header + encoded + b"\0" * _pad4(_HEADER_LEN + len(encoded)))

    def _claim(self, name: str) -> str:
        clean = _clean(name)
        if clean in self._names:
            raise ValueError(f"duplicate cpio member: {clean}")
        parent = str(PurePosixPath(clean).parent)
        if parent not in self._dirs:
            self.add_dir(parent)
        self._names.add(clean)
        return clean

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        clean = _clean(name)
        if clean in self._dirs:
            return
        self._claim(clean)
        self._dirs.add(clean)
        self._header(clean, stat.S_IFDIR | (mode & 0o7777), 0, nlink=2)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        _check_size(name, len(data))
        clean = self._claim(name)
        self._header(clean, stat.S_IFREG | (mode & 0o7777), len(data))
        self._write(data + b"\0" * _pad4(len(data)))

    def add_file(self, name: str, source: Path, mode: int | None = None) -> None:
        """Copy ``source`` (symlinks followed) in chunks; mode defaults to the source's."""
        st = source.stat()
        _check_size(name, st.st_size, source)
        clean = self._claim(name)
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode & 0o7777
        self._header(clean, stat.S_IFREG | perm, st.st_size)
        with source.open("rb") as f:
            copied = 0
            while chunk := f.read(_CHUNK):
                self._write(chunk)
                copied += len(chunk)
        if copied != st.st_size:
            raise OSError(f"{source} changed size while archiving ({st.st_size} → {copied})")
        self._write(b"\0" * _pad4(copied))

    def add_symlink(self, name: str, target: str) -> None:
        clean = self._claim(name)
        data = target.encode()
        self._header(clean, stat.S_IFLNK | 0o777, len(data))
        self._write(data + b"\0" * _pad4(len(data)))

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        clean = self._claim(name)
        self._header(clean, stat.S_IFCHR | (mode & 0o7777), 0, rdev=(major, minor))

    def close(self) -> None:
        if self._closed:
            return
        self._header(TRAILER, 0, 0, nlink=1)
        self._closed = True
        # The kernel reads initramfs in 512-byte blocks; pad like cpio(1) does.
        self._write(b"\0" * ((512 - self.bytes_written % 512) % 512))


def iter_entries(stream: BinaryIO) -> Iterator[Entry]:
    """Parse a newc archive (up to the trailer); raises ValueError on a malformed one."""
    while True:
        header = stream.read(_HEADER_LEN)
        if len(header) < _HEADER_LEN:
            raise ValueError("truncated cpio header (no trailer)")
        if header[:6] != MAGIC:
            raise ValueError(f"bad cpio magic {header[:6]!r}")
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _chk = f
        raw_name = stream.read(namesize)
        stream.read(_pad4(_HEADER_LEN + namesize))
        name = raw_name.rstrip(b"\0").decode()
        if name == TRAILER:
            return
        data = stream.read(size)
        if len(data) != size:
            raise ValueError(f"truncated cpio member {name}")
        stream.read(_pad4(size))
        yield Entry(name, mode, uid, gid, nlink, mtime, size, rmaj, rmin, ino, data)
