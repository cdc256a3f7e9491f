"""sysfs, procfs and /dev access for VFIO, rooted at a directory (``/`` on a real host).

Every such access of :mod:`vmlab.vfio` goes through a :class:`Sysfs`, so the whole package runs
against generated trees in tests. Writes to sysfs make the kernel act (unbind, probe);
:meth:`Sysfs.write` is the single place they happen.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"

_PCI_DEVICES = "sys/bus/pci/devices"
_PCI_DRIVERS = "sys/bus/pci/drivers"
_IOMMU_GROUPS = "sys/kernel/iommu_groups"


class Sysfs:
    """Reads and writes under ``root`` (``/`` on a real host); paths are relative (``sys/...``).

    Tests replace it with a subclass whose :meth:`write` also applies the kernel's reaction.
    """

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read(self, rel: str) -> str:
        """The file's text, stripped; raises OSError (FileNotFoundError when missing)."""
        return self.path(rel).read_text(encoding="utf-8", errors="replace").strip()

    def read_optional(self, rel: str) -> str | None:
        try:
            return self.read(rel)
        except OSError:
            return None

    def write(self, rel: str, value: str) -> None:
        """One write(2) of ``value`` to an existing file: what a sysfs attribute expects.

        No O_CREAT: a missing attribute (an unloaded driver's ``bind``) is FileNotFoundError,
        and the kernel's refusal (EBUSY, ENODEV, EINVAL) surfaces as OSError.
        """
        target = self.path(rel)
        log.debug("sysfs write %r -> %s", value, target)
        fd = os.open(target, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def listdir(self, rel: str) -> list[str]:
        """Sorted entries; empty when the directory is missing."""
        try:
            return sorted(p.name for p in self.path(rel).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def readlink(self, rel: str) -> str | None:
        """The symlink's target text, or None when it is missing or not a link."""
        try:
            return str(self.path(rel).readlink())
        except OSError:
            return None


def _access(root: Path, sysfs: Sysfs | None) -> Sysfs:
    return sysfs if sysfs is not None else Sysfs(root)


def _basename_of_link(target: str | None) -> str | None:
    return None if target is None else target.rstrip("/").rsplit("/", 1)[-1]


def _read_override(fs: Sysfs, address: str) -> str:
    """driver_override reads ``(null)`` when unset; returned as ""."""
    text = fs.read_optional(f"{_PCI_DEVICES}/{address}/driver_override") or ""
    return "" if text == "(null)" else text


def _current_driver(fs: Sysfs, address: str) -> str | None:
    return _basename_of_link(fs.readlink(f"{_PCI_DEVICES}/{address}/driver"))
