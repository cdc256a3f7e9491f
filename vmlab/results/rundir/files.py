"""Creating an artifact: exclusively, never over an existing file."""

from __future__ import annotations

import os
from pathlib import Path

from vmlab.errors import ResultError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def create_file(path: str | Path, data: bytes) -> None:
    """Create ``path`` holding ``data``; never over an existing file (ResultError).

    Plain ``os.open``/``os.write``: ``open()`` adds an fstat, an ioctl and a seek to every
    file, and a bench writes several per repetition. A missing folder raises
    FileNotFoundError."""
    try:
        fd = os.open(path, _CREATE, 0o666)
    except FileExistsError as exc:
        raise ResultError(
            "refusing to overwrite an artifact",
            path=Path(path),
            hint="results are never overwritten; start a new run",
        ) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
