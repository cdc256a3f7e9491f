"""Unpacking a tar archive from elsewhere (a fleet host's run directory, an L1 host's results):
plain files, folders and links that stay inside the destination, nothing else.

Python's own guard for this, ``extractall(filter="data")``, exists from 3.11.4 on; Debian 12
ships 3.11.2, so the same rules are checked here where the filter is missing.
"""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract_data(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` into ``dest``; a member that is not a file, folder or link, or that would
    land (or point) outside ``dest``, raises ``tarfile.TarError`` before anything is written."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    members = tar.getmembers()
    for member in members:
        _check(member, root)
    tar.extractall(dest, members=members)  # noqa: S202 - every member checked above


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _check(member: tarfile.TarInfo, root: Path) -> None:
    target = root / member.name
    if member.name.startswith("/") or not _inside(target, root):
        raise tarfile.TarError(f"{member.name}: outside the folder it is unpacked into")
    if member.issym():
        if member.linkname.startswith("/") or not _inside(target.parent / member.linkname, root):
            raise tarfile.TarError(f"{member.name}: a link to {member.linkname}, outside")
    elif member.islnk():
        if not _inside(root / member.linkname, root):
            raise tarfile.TarError(f"{member.name}: a hard link to {member.linkname}, outside")
    elif not (member.isfile() or member.isdir()):
        raise tarfile.TarError(f"{member.name}: not a file, folder or link")
