"""VFIO PCI passthrough: preflight, driver_override binding with a crash-safe restore record.

Every sysfs, procfs and /dev access goes through a :class:`Sysfs` rooted at a directory
(``/`` on a real host), so the whole module runs against generated trees in tests. Writes to
sysfs make the kernel act (unbind, probe); :meth:`Sysfs.write` is the single place they happen.

Binding follows the kernel's documented driver_override sequence (Documentation/ABI/testing/
sysfs-bus-pci): set ``driver_override`` to ``vfio-pci``, unbind from the current driver, write
the address to ``/sys/bus/pci/drivers_probe``. Before any of that, the original driver and
override of every device are written to a JSON state file (fsync + rename), so a crashed run
is undone by :func:`recover_stale` at the start of the next one.

The package: :mod:`~vmlab.vfio.sysfs` (the :class:`Sysfs` access), :mod:`~vmlab.vfio.address`
(PCI addresses), :mod:`~vmlab.vfio.preflight` (:func:`check_passthrough` and its report) and
:mod:`~vmlab.vfio.bind` (binding, the state file, restore); every public name is importable
from ``vmlab.vfio``.
"""

from __future__ import annotations

from vmlab.vfio.address import libvirt_hostdev, normalize_address
from vmlab.vfio.bind import (
    Binding,
    bind_vfio,
    default_state_file,
    recover_stale,
    restore,
    vfio_bound,
)
from vmlab.vfio.preflight import (
    MEMLOCK_OVERHEAD_MIB,
    DeviceReport,
    GroupMember,
    Problem,
    ProblemCode,
    VfioReport,
    check_passthrough,
)
from vmlab.vfio.sysfs import VFIO_DRIVER, Sysfs

__all__ = [
    "MEMLOCK_OVERHEAD_MIB",
    "VFIO_DRIVER",
    "Binding",
    "DeviceReport",
    "GroupMember",
    "Problem",
    "ProblemCode",
    "Sysfs",
    "VfioReport",
    "bind_vfio",
    "check_passthrough",
    "default_state_file",
    "libvirt_hostdev",
    "normalize_address",
    "recover_stale",
    "restore",
    "vfio_bound",
]
