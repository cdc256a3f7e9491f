"""The VFIO passthrough preflight: read-only checks of the devices, their IOMMU groups, the
vfio-pci driver, /dev/vfio and RLIMIT_MEMLOCK, each problem with a hint for the user."""

from __future__ import annotations

import enum
import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import HostError
from vmlab.vfio.address import _normalize_all
from vmlab.vfio.sysfs import (
    _IOMMU_GROUPS,
    _PCI_DEVICES,
    _PCI_DRIVERS,
    VFIO_DRIVER,
    Sysfs,
    _access,
    _basename_of_link,
    _current_driver,
)

log = logging.getLogger(__name__)

# Drivers that leave a group viable: they never do DMA on behalf of the host.
_HARMLESS_DRIVERS = frozenset({VFIO_DRIVER, "pci-stub"})
_PCI_CLASS_BRIDGE = 0x0604  # PCI-to-PCI bridge (class code without the prog-if byte)
_CAP_IPC_LOCK = 14  # capability bit: lets a process lock memory beyond RLIMIT_MEMLOCK
_MIB = 1024 * 1024
# libvirt's rule for VFIO guests: all guest RAM is pinned, plus 1 GiB for ROMs, MMIO, etc.
MEMLOCK_OVERHEAD_MIB = 1024


class ProblemCode(enum.StrEnum):
    DEVICE_NOT_FOUND = "device-not-found"
    IOMMU_OFF = "iommu-off"
    GROUP_UNVIABLE = "group-unviable"
    VFIO_MODULE_MISSING = "vfio-module-missing"
    DEV_VFIO_MISSING = "dev-vfio-missing"
    MEMLOCK_TOO_LOW = "memlock-too-low"


@dataclass(frozen=True)
class Problem:
    code: ProblemCode
    message: str
    hint: str


@dataclass(frozen=True)
class GroupMember:
    """Another device in the same IOMMU group."""

    address: str
    driver: str | None
    pci_class: int | None  # 24-bit class code (0x060400 for a PCI bridge)

    @property
    def is_bridge(self) -> bool:
        return self.pci_class is not None and self.pci_class >> 8 == _PCI_CLASS_BRIDGE


@dataclass(frozen=True)
class DeviceReport:
    address: str  # normalized: 0000:01:00.0
    found: bool
    vendor_id: str | None = None  # "144d"
    device_id: str | None = None  # "a808"
    pci_class: int | None = None
    driver: str | None = None
    iommu_group: int | None = None
    group_members: tuple[GroupMember, ...] = ()
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ids(self) -> str | None:
        """``vendor:device`` as lspci -n prints it."""
        if self.vendor_id is None or self.device_id is None:
            return None
        return f"{self.vendor_id}:{self.device_id}"

    @property
    def bound_to_vfio(self) -> bool:
        return self.driver == VFIO_DRIVER


@dataclass(frozen=True)
class VfioReport:
    devices: tuple[DeviceReport, ...]
    problems: tuple[Problem, ...] = ()  # host-wide: module, /dev/vfio/vfio, memlock
    notes: tuple[str, ...] = ()

    @property
    def all_problems(self) -> tuple[Problem, ...]:
        found: list[Problem] = list(self.problems)
        for dev in self.devices:
            found.extend(dev.problems)
        return tuple(found)

    @property
    def ok(self) -> bool:
        return not self.all_problems

    def describe(self) -> str:
        """Human-readable lines for logs and the CLI."""
        lines: list[str] = []
        for dev in self.devices:
            if not dev.found:
                lines.append(f"{dev.address}: not found")
            else:
                group = "-" if dev.iommu_group is None else str(dev.iommu_group)
                lines.append(
                    f"{dev.address} [{dev.ids}] driver={dev.driver or '-'} iommu_group={group}"
                )
                lines.extend(
                    f"  group member {m.address} driver={m.driver or '-'}"
                    + (" (bridge)" if m.is_bridge else "")
                    for m in dev.group_members
                )
            lines.extend(f"  note: {n}" for n in dev.notes)
            lines.extend(f"  {p.code}: {p.message}\n    hint: {p.hint}" for p in dev.problems)
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"{p.code}: {p.message}\n  hint: {p.hint}" for p in self.problems)
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """HostError naming every problem (duplicates, e.g. IOMMU off per device, once)."""
        unique: dict[tuple[str, str], Problem] = {}
        for p in self.all_problems:
            unique.setdefault((p.code, p.hint), p)
        if not unique:
            return
        raise HostError(
            "VFIO passthrough is not possible on this host:\n" + self.describe(),
            hint="; ".join(dict.fromkeys(p.hint for p in unique.values())),
        )


def _hex_id(text: str | None) -> str | None:
    if text is None:
        return None
    return text.lower().removeprefix("0x")


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _iommu_off_problem(fs: Sysfs, address: str, any_groups: bool) -> Problem:
    if any_groups:
        return Problem(
            ProblemCode.IOMMU_OFF,
            f"{address} is in no IOMMU group although the IOMMU is on",
            "the device sits behind no IOMMU unit (check `dmesg | grep -i -e DMAR -e AMD-Vi`); "
            "try another slot",
        )
    args = (fs.read_optional("proc/cmdline") or "").split()
    cpuinfo = fs.read_optional("proc/cpuinfo") or ""
    vendor = "intel" if "GenuineIntel" in cpuinfo else "amd" if "AuthenticAMD" in cpuinfo else ""
    message = "the IOMMU is off: /sys/kernel/iommu_groups is empty"
    grub = "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub)"
    # iommu=pt is optional for VFIO: host devices skip translation and keep their DMA speed.
    pt = "" if "iommu=pt" in args else " iommu=pt"
    off = next((a for a in args if a in ("intel_iommu=off", "amd_iommu=off", "iommu=off")), None)
    if off is not None:
        add = f" and add intel_iommu=on{pt}" if vendor == "intel" else ""
        return Problem(
            ProblemCode.IOMMU_OFF,
            f"{message}; the kernel command line has {off}",
            f"remove {off} from the kernel command line{add} {grub} and reboot",
        )
    if vendor == "intel" and "intel_iommu=on" in args:
        return Problem(
            ProblemCode.IOMMU_OFF,
            f"{message} although the kernel command line has intel_iommu=on",
            "enable VT-d in the firmware setup (in a VM: give it a virtual IOMMU) and reboot; "
            "see `dmesg | grep -i DMAR`",
        )
    if vendor == "intel":
        return Problem(
            ProblemCode.IOMMU_OFF,
            f"{message}; the kernel command line lacks intel_iommu=on",
            f"add intel_iommu=on{pt} to the kernel command line {grub}, enable VT-d in the "
            "firmware setup, and reboot",
        )
    if vendor == "amd":
        # The kernel turns AMD-Vi on by default when the firmware exposes it (no amd_iommu=on).
        extra = f"; add{pt} to the kernel command line {grub}" if pt else ""
        return Problem(
            ProblemCode.IOMMU_OFF,
            f"{message}; on AMD the kernel enables AMD-Vi when the firmware exposes it",
            "enable the IOMMU (AMD-Vi) in the firmware setup (in a VM: give it a virtual "
            f"IOMMU) and reboot{extra}; see `dmesg | grep AMD-Vi`",
        )
    return Problem(
        ProblemCode.IOMMU_OFF,
        message,
        f"enable the IOMMU in the firmware setup; on Intel also add intel_iommu=on{pt} to the "
        f"kernel command line {grub}; reboot",
    )


def _has_ipc_lock(fs: Sysfs) -> bool:
    for line in (fs.read_optional("proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split(":", 1)[1].strip(), 16) >> _CAP_IPC_LOCK & 1)
            except ValueError:
                return False
    return False


def _fmt_limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value // _MIB} MiB"


def _memlock_check(
    fs: Sysfs, memory_mib: int, getrlimit: Callable[[int], tuple[int, int]]
) -> tuple[list[Problem], list[str]]:
    soft, hard = getrlimit(resource.RLIMIT_MEMLOCK)
    needed = (memory_mib + MEMLOCK_OVERHEAD_MIB) * _MIB
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return [], []
    if _has_ipc_lock(fs):
        return [], [
            f"RLIMIT_MEMLOCK is {_fmt_limit(soft)} but this process has CAP_IPC_LOCK, "
            "which VFIO honours instead of the limit"
        ]
    raise_hard = (
        ""
        if hard == resource.RLIM_INFINITY or hard >= needed
        else f"; the hard limit is {_fmt_limit(hard)}: raise it with a `memlock` line in "
        "/etc/security/limits.conf"
    )
    return [
        Problem(
            ProblemCode.MEMLOCK_TOO_LOW,
            f"RLIMIT_MEMLOCK is {_fmt_limit(soft)}; VFIO pins all guest RAM, so a "
            f"{memory_mib} MiB guest needs at least {memory_mib + MEMLOCK_OVERHEAD_MIB} MiB",
            "run `ulimit -l unlimited` in the shell that starts vmlab (LimitMEMLOCK=infinity "
            f"in a systemd unit){raise_hard}",
        )
    ], []


def _check_device(
    fs: Sysfs, address: str, requested: frozenset[str], any_groups: bool
) -> DeviceReport:
    base = f"{_PCI_DEVICES}/{address}"
    if not fs.exists(base):
        return DeviceReport(
            address=address,
            found=False,
            problems=(
                Problem(
                    ProblemCode.DEVICE_NOT_FOUND,
                    f"no PCI device {address} on this host",
                    "check the address in the spec; `lspci -D` lists this host's devices",
                ),
            ),
        )
    driver = _current_driver(fs, address)
    group = _int_or_none(_basename_of_link(fs.readlink(f"{base}/iommu_group")))
    problems: list[Problem] = []
    notes: list[str] = []
    if driver == VFIO_DRIVER:
        notes.append(f"{address} is already bound to {VFIO_DRIVER}; vmlab leaves it as it is")
    members: list[GroupMember] = []
    if group is None:
        problems.append(_iommu_off_problem(fs, address, any_groups))
    else:
        gdir = f"{_IOMMU_GROUPS}/{group}/devices"
        for other in fs.listdir(gdir):
            if other == address:
                continue
            members.append(
                GroupMember(
                    address=other,
                    driver=_basename_of_link(fs.readlink(f"{gdir}/{other}/driver")),
                    pci_class=_int_or_none(fs.read_optional(f"{gdir}/{other}/class")),
                )
            )
        blockers = [
            m
            for m in members
            if m.driver is not None
            and m.driver not in _HARMLESS_DRIVERS
            and not m.is_bridge
            and m.address not in requested
        ]
        if blockers:
            names = ", ".join(f"{m.address} ({m.driver})" for m in blockers)
            problems.append(
                Problem(
                    ProblemCode.GROUP_UNVIABLE,
                    f"IOMMU group {group} of {address} also holds {names}, bound to a host "
                    "driver: a group is passed through whole or not at all",
                    f"pass {', '.join(m.address for m in blockers)} through as well, or unbind "
                    f"it (echo ADDRESS > /sys/bus/pci/drivers/DRIVER/unbind), or move {address} "
                    "to a slot with its own IOMMU group",
                )
            )
    return DeviceReport(
        address=address,
        found=True,
        vendor_id=_hex_id(fs.read_optional(f"{base}/vendor")),
        device_id=_hex_id(fs.read_optional(f"{base}/device")),
        pci_class=_int_or_none(fs.read_optional(f"{base}/class")),
        driver=driver,
        iommu_group=group,
        group_members=tuple(members),
        problems=tuple(problems),
        notes=tuple(notes),
    )


def check_passthrough(
    addresses: Sequence[str],
    *,
    root: Path = Path("/"),
    memory_mib: int | None = None,
    sysfs: Sysfs | None = None,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
) -> VfioReport:
    """Read-only preflight of passing ``addresses`` to one guest; never writes.

    ``memory_mib`` (guest RAM) turns on the RLIMIT_MEMLOCK check for a QEMU this process
    starts; libvirt raises the limit of its own QEMU, so leave it None there.
    """
    fs = _access(root, sysfs)
    normalized = _normalize_all(addresses)
    any_groups = bool(fs.listdir(_IOMMU_GROUPS))
    requested = frozenset(normalized)
    devices = tuple(_check_device(fs, a, requested, any_groups) for a in normalized)

    problems: list[Problem] = []
    notes: list[str] = []
    module_loaded = fs.exists(f"{_PCI_DRIVERS}/{VFIO_DRIVER}")
    if not module_loaded:
        problems.append(
            Problem(
                ProblemCode.VFIO_MODULE_MISSING,
                f"the {VFIO_DRIVER} driver is not loaded "
                f"(/{_PCI_DRIVERS}/{VFIO_DRIVER} is missing)",
                "modprobe vfio-pci (and list it in /etc/modules-load.d/ to keep it)",
            )
        )
    if not fs.exists("dev/vfio/vfio"):
        problems.append(
            Problem(
                ProblemCode.DEV_VFIO_MISSING,
                "/dev/vfio/vfio is missing",
                "it appears with `modprobe vfio-pci`"
                if not module_loaded
                else "vfio is loaded but /dev/vfio/vfio is missing: in a container, pass "
                "/dev/vfio through; on a host, check devtmpfs on /dev",
            )
        )
    if memory_mib is not None:
        mem_problems, mem_notes = _memlock_check(fs, memory_mib, getrlimit)
        problems.extend(mem_problems)
        notes.extend(mem_notes)
    report = VfioReport(devices=devices, problems=tuple(problems), notes=tuple(notes))
    log.debug("VFIO preflight:\n%s", report.describe())
    return report
