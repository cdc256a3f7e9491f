"""Where vmlab keeps its cache (guest images, keys) and its runtime state."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Built guest images and downloaded packages; safe to delete, rebuilt on demand."""
    if os.environ.get("VMLAB_CACHE"):
        return Path(os.environ["VMLAB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vmlab"


def state_dir() -> Path:
    """Per-lab state that must survive a crash (keys, VFIO binding records, micro Ceph)."""
    base = os.environ.get("VMLAB_STATE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "vmlab"


def runtime_dir() -> Path:
    """Sockets and pidfiles of running guests; short paths (unix sockets are limited to 107)."""
    base = os.environ.get("VMLAB_RUNTIME")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "vmlab" if xdg else Path("/tmp") / f"vmlab-{os.getuid()}"


UNIX_PATH_MAX = 107  # usable bytes of sun_path


def check_socket_path(path: Path, what: str) -> None:
    """A clear error for a unix socket path the kernel would refuse (bind: "name too long")."""
    from vmlab.errors import HostError

    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise HostError(
            f"{what} {path} is longer than {UNIX_PATH_MAX} bytes, the limit of a unix socket",
            hint="use a shorter directory (VMLAB_RUNTIME, or the target's -S)",
        )
