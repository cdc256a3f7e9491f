"""Where this host's SPDK vhost target is, for specs that leave ``spdk.binary`` out.

In order: ``VMLAB_SPDK`` (an install prefix holding ``bin/vhost``, or the binary itself), then
``vhost`` on PATH, then the prefixes vmlab's CI builds into (``/opt/vmlab-spdk/<version>``,
newest first: what ``../shared/tools/build-spdk`` installs). A candidate counts only if
``vhost --version`` says it is SPDK.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import VmlabError
from vmlab.proc import run

ENV = "VMLAB_SPDK"
BUILD_ROOT = Path("/opt/vmlab-spdk")
BINARY = "vhost"
VERSION_TIMEOUT_S = 10.0
HOW_TO_GET = (
    "build SPDK (v23.01 or later, ./configure --with-rbd --with-uring) and put its bin/vhost "
    f"on PATH or set {ENV} to its prefix; vmlab's CI builds it with ../shared/tools/build-spdk"
)


@dataclass(frozen=True)
class FoundSpdk:
    vhost: Path
    version: str  # "SPDK v23.01.1"
    how: str  # where it was found: "VMLAB_SPDK", "PATH", "/opt/vmlab-spdk"


def _candidates() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if value := os.environ.get(ENV):
        path = Path(value)
        found.append((path / "bin" / BINARY if path.is_dir() else path, ENV))
    if on_path := shutil.which(BINARY):
        found.append((Path(on_path), "PATH"))
    if BUILD_ROOT.is_dir():
        prefixes = sorted(BUILD_ROOT.iterdir(), key=lambda p: _version_key(p.name), reverse=True)
        found += [(p / "bin" / BINARY, str(BUILD_ROOT)) for p in prefixes]
    return found


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def spdk_version(binary: Path) -> str | None:
    """``SPDK vX.Y[.Z]`` as the binary reports it, or None if it is not SPDK's."""
    if not os.access(binary, os.X_OK):
        return None
    try:
        done = run([str(binary), "--version"], timeout_s=VERSION_TIMEOUT_S, check=False)
    except VmlabError:  # did not run, or hung: not an SPDK we can use
        return None
    match = re.search(r"SPDK v\S+", done.out + done.err)
    return match.group(0) if match else None


def find_spdk() -> FoundSpdk | None:
    for path, how in _candidates():
        version = spdk_version(path)
        if version is not None:
            return FoundSpdk(vhost=path, version=version, how=how)
    return None
