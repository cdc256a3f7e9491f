"""Generated sysfs trees for the VFIO tests (this host has no IOMMU to test against).

:class:`FakeSysfsTree` lays out files and relative symlinks the way Linux does::

    sys/devices/pci0000:00/0000:01:00.0/{vendor,device,class,driver_override}
    sys/devices/pci0000:00/0000:01:00.0/driver -> ../../../bus/pci/drivers/nvme
    sys/devices/pci0000:00/0000:01:00.0/iommu_group -> ../../../kernel/iommu_groups/12
    sys/bus/pci/devices/0000:01:00.0 -> ../../../devices/pci0000:00/0000:01:00.0
    sys/bus/pci/drivers/nvme/{bind,unbind,0000:01:00.0 -> ../../../../devices/...}
    sys/kernel/iommu_groups/12/devices/0000:01:00.0 -> ../../../../devices/pci0000:00/...
    proc/cmdline, proc/cpuinfo, dev/vfio/vfio

The tree is the "kernel": it outlives the :class:`KernelSysfs` objects that write to it, as
the kernel outlives a crashed vmlab. :class:`KernelSysfs` applies the kernel's reaction to
the writes vmlab makes (driver_override, unbind, bind, drivers_probe) and nothing else.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from vmlab.vfio import Sysfs

_DEVICES = "sys/devices/pci0000:00"
_BUS = "sys/bus/pci"

_UNSET = object()


def _oserror(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class FakeSysfsTree:
    def __init__(
        self,
        root: Path,
        *,
        iommu: bool = True,
        vfio_module: bool = True,
        dev_vfio: bool = True,
        cmdline: str = "BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet",
        cpu_vendor: str = "GenuineIntel",
    ) -> None:
        self.root = root
        self.iommu = iommu
        # Which driver's id table matches each device (what a probe without override picks).
        self.default_driver: dict[str, str | None] = {}
        for d in (f"{_DEVICES}", f"{_BUS}/devices", f"{_BUS}/drivers", "proc", "dev"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "sys/kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
        for attr in ("drivers_probe", "drivers_autoprobe", "rescan"):
            (root / _BUS / attr).write_text("")
        (root / "proc/cmdline").write_text(cmdline + "\n")
        (root / "proc/cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {cpu_vendor}\n")
        if vfio_module:
            self.add_driver("vfio-pci")
        if dev_vfio:
            (root / "dev/vfio").mkdir(exist_ok=True)
            (root / "dev/vfio/vfio").write_text("")

    # ---- building

    def add_driver(self, name: str) -> None:
        d = self.root / _BUS / "drivers" / name
        d.mkdir(parents=True, exist_ok=True)
        for attr in ("bind", "unbind", "new_id", "remove_id", "uevent"):
            (d / attr).write_text("")

    def add_device(
        self,
        address: str,
        *,
        vendor: str = "0x144d",
        device: str = "0xa808",
        pci_class: str = "0x010802",
        driver: str | None = None,
        default_driver: object = _UNSET,
        override: str = "",
        group: int | None = None,
    ) -> None:
        """A device; ``default_driver`` (default: ``driver``) is what its ids match."""
        dev = self.root / _DEVICES / address
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text(device + "\n")
        (dev / "class").write_text(pci_class + "\n")
        (dev / "driver_override").write_text((override or "(null)") + "\n")
        (dev / "remove").write_text("")
        (self.root / _BUS / "devices" / address).symlink_to(
            f"../../../devices/pci0000:00/{address}"
        )
        dflt = driver if default_driver is _UNSET else default_driver
        assert dflt is None or isinstance(dflt, str)
        self.default_driver[address] = dflt
        if self.iommu and group is not None:
            gdir = self.root / "sys/kernel/iommu_groups" / str(group)
            (gdir / "devices").mkdir(parents=True, exist_ok=True)
            (gdir / "type").write_text("DMA\n")
            (dev / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")
            (gdir / "devices" / address).symlink_to(f"../../../../devices/pci0000:00/{address}")
        if driver is not None:
            if not (self.root / _BUS / "drivers" / driver).exists():
                self.add_driver(driver)
            self._link_driver(address, driver)

    # ---- inspecting

    def _dev(self, address: str) -> Path:
        return self.root / _DEVICES / address

    def driver_of(self, address: str) -> str | None:
        link = self._dev(address) / "driver"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def override_of(self, address: str) -> str:
        text = (self._dev(address) / "driver_override").read_text().strip()
        return "" if text == "(null)" else text

    def group_of(self, address: str) -> str | None:
        link = self._dev(address) / "iommu_group"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    # ---- the kernel's reactions

    def _link_driver(self, address: str, driver: str) -> None:
        (self._dev(address) / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
        (self.root / _BUS / "drivers" / driver / address).symlink_to(
            f"../../../../devices/pci0000:00/{address}"
        )
        group = self.group_of(address)
        if driver == "vfio-pci" and group is not None:
            (self.root / "dev/vfio").mkdir(exist_ok=True)
            (self.root / "dev/vfio" / group).write_text("")

    def _unlink_driver(self, address: str) -> None:
        driver = self.driver_of(address)
        assert driver is not None
        (self._dev(address) / "driver").unlink()
        (self.root / _BUS / "drivers" / driver / address).unlink()
        group = self.group_of(address)
        if driver == "vfio-pci" and group is not None:
            members = os.listdir(self.root / "sys/kernel/iommu_groups" / group / "devices")
            if not any(self.driver_of(m) == "vfio-pci" for m in members):
                (self.root / "dev/vfio" / group).unlink(missing_ok=True)

    def _matches(self, address: str, driver: str) -> bool:
        """pci_match_device(): driver_override, when set, is the only driver that matches."""
        override = self.override_of(address)
        if override:
            return override == driver
        return self.default_driver.get(address) == driver

    def _has_driver(self, name: str) -> bool:
        return (self.root / _BUS / "drivers" / name).is_dir()

    def apply_write(self, rel: str, value: str) -> None:
        path = self.root / rel
        if not path.exists():
            raise _oserror(errno.ENOENT, path)
        parts = rel.split("/")
        arg = value.strip()
        if rel.startswith(f"{_BUS}/devices/") and parts[-1] == "driver_override":
            path.write_text((value.removesuffix("\n") or "(null)") + "\n")
        elif rel.startswith(f"{_BUS}/drivers/") and parts[-1] in ("bind", "unbind"):
            driver = parts[-2]
            if not self._dev(arg).is_dir():
                raise _oserror(errno.ENODEV, path)
            if parts[-1] == "unbind":
                if self.driver_of(arg) != driver:
                    raise _oserror(errno.ENODEV, path)
                self._unlink_driver(arg)
            else:
                if self.driver_of(arg) is not None:
                    raise _oserror(errno.EBUSY, path)
                if not self._matches(arg, driver):
                    raise _oserror(errno.ENODEV, path)
                self._link_driver(arg, driver)
        elif rel == f"{_BUS}/drivers_probe":
            if not self._dev(arg).is_dir():
                raise _oserror(errno.ENODEV, path)
            if self.driver_of(arg) is not None:
                return
            override = self.override_of(arg)
            candidate = override or self.default_driver.get(arg)
            # No matching driver loaded: the kernel reports success and binds nothing.
            if candidate and self._has_driver(candidate) and self._matches(arg, candidate):
                self._link_driver(arg, candidate)
        else:
            path.write_text(value)


class KernelSysfs(Sysfs):
    """Sysfs over a :class:`FakeSysfsTree` whose writes act like the kernel's.

    ``before_write(rel, value)`` runs before each write (raise from it to simulate a failure);
    every write is recorded in ``writes``.
    """

    def __init__(
        self, tree: FakeSysfsTree, *, before_write: Callable[[str, str], None] | None = None
    ) -> None:
        super().__init__(tree.root)
        self.tree = tree
        self.before_write = before_write
        self.writes: list[tuple[str, str]] = []

    def write(self, rel: str, value: str) -> None:
        rel = rel.lstrip("/")
        if self.before_write is not None:
            self.before_write(rel, value)
        self.writes.append((rel, value))
        self.tree.apply_write(rel, value)
