"""VFIO PCI passthrough: preflight, driver_override binding with a crash-safe restore record.

Every sysfs, procfs and /dev access goes through a :class:`Sysfs` rooted at a directory
(``/`` on a real host), so the whole module runs against generated trees in tests. Writes to
sysfs make the kernel act (unbind, probe); :meth:`Sysfs.write` is the single place they happen.

Binding follows the kernel's documented driver_override sequence (Documentation/ABI/testing/
sysfs-bus-pci): set ``driver_override`` to ``vfio-pci``, unbind from the current driver, write
the address to ``/sys/bus/pci/drivers_probe``. Before any of that, the original driver and
override of every device are written to a JSON state file (fsync + rename), so a crashed run
is undone by :func:`recover_stale` at the start of the next one.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import resource
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.errors import HostError, SpecError
from vmlab.paths import state_dir
from vmlab.qemuopts import qemu_quote

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"
# Drivers that leave a group viable: they never do DMA on behalf of the host.
_HARMLESS_DRIVERS = frozenset({VFIO_DRIVER, "pci-stub"})
_PCI_CLASS_BRIDGE = 0x0604  # PCI-to-PCI bridge (class code without the prog-if byte)
_CAP_IPC_LOCK = 14  # capability bit: lets a process lock memory beyond RLIMIT_MEMLOCK
_MIB = 1024 * 1024
# libvirt's rule for VFIO guests: all guest RAM is pinned, plus 1 GiB for ROMs, MMIO, etc.
MEMLOCK_OVERHEAD_MIB = 1024
_STATE_VERSION = 1

_PCI_DEVICES = "sys/bus/pci/devices"
_PCI_DRIVERS = "sys/bus/pci/drivers"
_IOMMU_GROUPS = "sys/kernel/iommu_groups"

_ADDRESS_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)


# --------------------------------------------------------------------------------------------
# sysfs access


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


# --------------------------------------------------------------------------------------------
# addresses and rendering


def normalize_address(address: str) -> str:
    """``01:00.0`` → ``0000:01:00.0``; lower case; SpecError on anything else."""
    m = _ADDRESS_RE.match(address.strip())
    if m is None or int(m["slot"], 16) > 0x1F:
        raise SpecError(
            f"not a PCI address: {address!r}",
            hint="write it as DOMAIN:BUS:SLOT.FUNCTION (0000:01:00.0) or BUS:SLOT.FUNCTION "
            "(01:00.0); `lspci -D` lists them",
        )
    domain = int(m["domain"] or "0", 16)
    return f"{domain:04x}:{int(m['bus'], 16):02x}:{int(m['slot'], 16):02x}.{m['function']}"


def qemu_vfio_args(address: str, *, id: str, bus: str | None = None) -> list[str]:
    """``["-device", "vfio-pci,host=0000:01:00.0,id=hostdev0"]`` (values comma-escaped)."""
    opts = [f"vfio-pci,host={normalize_address(address)}", f"id={qemu_quote(id)}"]
    if bus is not None:
        opts.append(f"bus={qemu_quote(bus)}")
    return ["-device", ",".join(opts)]


def libvirt_hostdev(address: str) -> dict[str, str]:
    """Attributes of a libvirt ``<hostdev><source><address .../>``: hex strings."""
    domain, bus, rest = normalize_address(address).split(":")
    slot, function = rest.split(".")
    return {
        "domain": f"0x{domain}",
        "bus": f"0x{bus}",
        "slot": f"0x{slot}",
        "function": f"0x{function}",
    }


# --------------------------------------------------------------------------------------------
# preflight report


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


def _basename_of_link(target: str | None) -> str | None:
    return None if target is None else target.rstrip("/").rsplit("/", 1)[-1]


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


def _read_override(fs: Sysfs, address: str) -> str:
    """driver_override reads ``(null)`` when unset; returned as ""."""
    text = fs.read_optional(f"{_PCI_DEVICES}/{address}/driver_override") or ""
    return "" if text == "(null)" else text


def _current_driver(fs: Sysfs, address: str) -> str | None:
    return _basename_of_link(fs.readlink(f"{_PCI_DEVICES}/{address}/driver"))


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


def _normalize_all(addresses: Sequence[str]) -> list[str]:
    if isinstance(addresses, str):
        raise TypeError("addresses is a sequence of PCI addresses, not one string")
    return list(dict.fromkeys(normalize_address(a) for a in addresses))


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


# --------------------------------------------------------------------------------------------
# binding and restore


@dataclass(frozen=True)
class Binding:
    """One device's state before vmlab bound it to vfio-pci."""

    address: str
    original_driver: str | None
    original_override: str  # "" when unset
    bound_by_vmlab: bool = True  # False: it was on vfio-pci already

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "original_driver": self.original_driver,
            "original_override": self.original_override,
        }


def default_state_file() -> Path:
    """Where a run records its VFIO bindings (survives a crash, per user)."""
    return state_dir() / "vfio-bindings.json"


def _write_state(state_file: Path, bindings: Sequence[Binding]) -> None:
    """Write-then-rename with fsync of the file and its directory: it exists or it does not."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(
        {"version": _STATE_VERSION, "devices": [b.to_json() for b in bindings]}, indent=2
    )
    tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(state_file)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(state_file.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _corrupt(state_file: Path, why: str) -> HostError:
    return HostError(
        f"VFIO state file {state_file} is unreadable: {why}",
        hint="it records which driver each device had before vmlab bound it to vfio-pci: "
        "rebind the devices by hand if needed, then delete the file",
    )


def _read_state(state_file: Path) -> list[Binding]:
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _corrupt(state_file, str(exc)) from exc
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        raise _corrupt(state_file, f"expected version {_STATE_VERSION}")
    out: list[Binding] = []
    try:
        for rec in data["devices"]:
            address, drv = rec["address"], rec["original_driver"]
            override = rec["original_override"]
            if not (
                isinstance(address, str)
                and (drv is None or isinstance(drv, str))
                and isinstance(override, str)
            ):
                raise TypeError(f"bad record {rec!r}")
            out.append(Binding(normalize_address(address), drv, override))
    except (KeyError, TypeError, SpecError) as exc:
        raise _corrupt(state_file, str(exc)) from exc
    return out


def _unbind(fs: Sysfs, address: str, driver: str) -> None:
    log.info("%s: unbinding from %s", address, driver)
    fs.write(f"{_PCI_DRIVERS}/{driver}/unbind", address)


def _bind_one(fs: Sysfs, binding: Binding) -> None:
    address = binding.address
    fs.write(f"{_PCI_DEVICES}/{address}/driver_override", VFIO_DRIVER)
    if binding.original_driver is not None:
        _unbind(fs, address, binding.original_driver)
    fs.write("sys/bus/pci/drivers_probe", address)
    now = _current_driver(fs, address)
    if now != VFIO_DRIVER:
        raise HostError(
            f"{address} did not bind to {VFIO_DRIVER} (driver now: {now or 'none'})",
            hint="see `dmesg | tail` for the vfio-pci probe error",
        )
    group = _basename_of_link(fs.readlink(f"{_PCI_DEVICES}/{address}/iommu_group"))
    if group is not None and not fs.exists(f"dev/vfio/{group}"):
        log.warning("%s is bound to vfio-pci but /dev/vfio/%s is missing", address, group)
    log.info("%s: bound to %s (was %s)", address, VFIO_DRIVER, binding.original_driver or "none")


def bind_vfio(
    addresses: Sequence[str],
    *,
    root: Path = Path("/"),
    state_file: Path,
    sysfs: Sysfs | None = None,
) -> list[Binding]:
    """Bind every device to vfio-pci via driver_override; one Binding per device, in order.

    Preflight first (HostError if it finds problems); the state file is written before the
    first sysfs write; a failure part way restores what was done and re-raises.
    """
    fs = _access(root, sysfs)
    if state_file.exists():
        raise HostError(
            f"VFIO state file {state_file} from an earlier run is still there",
            hint="restore it first (vmlab does so at the start of a run via recover_stale)",
        )
    check_passthrough(addresses, sysfs=fs).raise_for_problems()
    bindings: list[Binding] = []
    for address in _normalize_all(addresses):
        driver = _current_driver(fs, address)
        bindings.append(
            Binding(address, driver, _read_override(fs, address), driver != VFIO_DRIVER)
        )
    todo = [b for b in bindings if b.bound_by_vmlab]
    for b in bindings:
        if not b.bound_by_vmlab:
            log.info("%s: already bound to %s; left alone", b.address, VFIO_DRIVER)
    if not todo:
        return bindings
    _write_state(state_file, todo)
    try:
        for b in todo:
            _bind_one(fs, b)
    except BaseException:
        log.error("binding to vfio-pci failed; restoring the devices' drivers")
        try:
            restore(state_file, root=root, sysfs=fs)
        except Exception:
            log.exception("restore after a failed bind failed; %s is kept", state_file)
        raise
    return bindings


def _restore_one(fs: Sysfs, b: Binding) -> None:
    address = b.address
    if not fs.exists(f"{_PCI_DEVICES}/{address}"):
        raise HostError(f"{address} is gone", hint="was the device hot-unplugged?")
    driver = _current_driver(fs, address)
    if driver == b.original_driver and _read_override(fs, address) == b.original_override:
        log.debug("%s: already on %s", address, driver or "no driver")
        return
    if driver is not None and driver != b.original_driver:
        _unbind(fs, address, driver)
    # The kernel strips one trailing newline; a lone "\n" clears the override.
    fs.write(f"{_PCI_DEVICES}/{address}/driver_override", b.original_override or "\n")
    if b.original_driver is not None and _current_driver(fs, address) is None:
        bind_attr = f"{_PCI_DRIVERS}/{b.original_driver}/bind"
        if fs.exists(bind_attr):
            fs.write(bind_attr, address)
        else:
            fs.write("sys/bus/pci/drivers_probe", address)
    now = _current_driver(fs, address)
    if now != b.original_driver:
        raise HostError(
            f"{address} is on {now or 'no driver'}, not back on {b.original_driver or 'none'}",
            hint=f"is the {b.original_driver} module loaded? see `dmesg | tail`",
        )
    log.info("%s: restored to %s", address, b.original_driver or "no driver")


def restore(
    state_file: Path, *, root: Path = Path("/"), sysfs: Sysfs | None = None
) -> list[Binding]:
    """Put every recorded device back on its original driver and override.

    Tries every device; removes the state file only when all succeeded, else raises HostError
    (the file stays, so the next run retries).
    """
    fs = _access(root, sysfs)
    bindings = _read_state(state_file)
    failures: list[str] = []
    for b in bindings:
        try:
            _restore_one(fs, b)
        except (OSError, HostError) as exc:
            log.error("%s: restore failed: %s", b.address, exc)
            failures.append(f"{b.address}: {exc}")
    if failures:
        raise HostError(
            "could not restore the original drivers of: " + "; ".join(failures),
            hint=f"the record stays in {state_file} and the next vmlab run retries it; "
            "or rebind by hand and delete the file",
        )
    state_file.unlink()
    return bindings


def recover_stale(
    state_file: Path, *, root: Path = Path("/"), sysfs: Sysfs | None = None
) -> list[Binding]:
    """At the start of a run: undo the bindings a crashed run left behind (if any)."""
    if not state_file.exists():
        return []
    log.warning("found %s from a run that did not finish; restoring its devices", state_file)
    restored = restore(state_file, root=root, sysfs=sysfs)
    for b in restored:
        log.warning(
            "recovered %s: back on %s (driver_override %r)",
            b.address,
            b.original_driver or "no driver",
            b.original_override,
        )
    return restored


@contextlib.contextmanager
def vfio_bound(
    addresses: Sequence[str],
    *,
    root: Path = Path("/"),
    state_file: Path,
    sysfs: Sysfs | None = None,
) -> Iterator[list[Binding]]:
    """Devices on vfio-pci inside the block; restored on exit, also on KeyboardInterrupt."""
    bindings = bind_vfio(addresses, root=root, state_file=state_file, sysfs=sysfs)
    if not any(b.bound_by_vmlab for b in bindings):
        yield bindings
        return
    try:
        yield bindings
    except BaseException:
        try:
            restore(state_file, root=root, sysfs=sysfs)
        except Exception:
            log.exception("restoring VFIO devices failed; %s is kept", state_file)
        raise
    restore(state_file, root=root, sysfs=sysfs)
