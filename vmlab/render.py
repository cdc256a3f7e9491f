"""Render a planned case into what runs: a QEMU argv (one token per template line).

Templates live in templates/ and are rendered with StrictUndefined, so a missing value is an
error at render time, never an empty string in an argv.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vmlab.plan import Case
from vmlab.qemuopts import qemu_quote
from vmlab.resources import templates_dir
from vmlab.spec import Disk, Guest
from vmlab.vfio import normalize_address


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml",), default=False),
        keep_trailing_newline=True,
    )
    env.filters["q"] = qemu_quote
    return env


def render_text(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_argv(template: str, **context: Any) -> list[str]:
    """Render a template that emits one argv token per line (blank lines are dropped)."""
    return [line.strip() for line in render_text(template, **context).splitlines() if line.strip()]


@dataclass(frozen=True)
class CacheFlags:
    """QEMU's -drive cache= shorthand spelled out for -blockdev and -device (QEMU docs table)."""

    direct: str
    no_flush: str
    write_cache: str


_CACHE_MODES = {
    "none": CacheFlags("on", "off", "on"),
    "directsync": CacheFlags("on", "off", "off"),
    "writeback": CacheFlags("off", "off", "on"),
    "writethrough": CacheFlags("off", "off", "off"),
    "unsafe": CacheFlags("off", "on", "on"),
}


@dataclass(frozen=True)
class BootImage:
    """How the guest boots: a kernel (direct boot) or its own firmware and boot disk."""

    kernel: Path | None
    initrd: Path | None
    cmdline: str
    root_disk: Path | None = None  # a per-guest qcow2 overlay (rootfs and cloud images)
    seed: Path | None = None  # the NoCloud seed ISO
    no_reboot: bool = True  # cloud guests may reboot during cloud-init


@dataclass(frozen=True)
class GuestRuntime:
    """Where one launched guest keeps its sockets and logs, and how to reach it."""

    qmp_socket: Path
    serial_log: Path
    pidfile: Path
    ssh_port: int
    nics: Sequence[tuple[str, str]] = ()  # (-netdev, -device) of lab NICs, fds already open


@dataclass(frozen=True)
class RbdTarget:
    """An RBD image as QEMU's rbd block driver opens it (the conf names the keyring)."""

    pool: str
    image: str
    conf: Path
    user: str
    keyring: Path  # where the client's key is (the libvirt launcher reads it)


@dataclass(frozen=True)
class DiskSource:
    """Where a disk's data is, as the bench resolved it (scratch, overlay, sidecar socket)."""

    path: Path
    format: str = "raw"
    protocol: str = "file"  # QEMU block driver: file | host_device | rbd
    socket: Path | None = None  # vhost-user socket, for disks a sidecar serves
    wwpn: str | None = None  # vhost-scsi target, for disks LIO serves
    rbd: RbdTarget | None = None  # for protocol rbd


FIRST_DISK_SLOT = 0x10
FIRST_NIC_SLOT = 0x8  # lab NICs: after mgmt (eth0) and rng, before the disks


def nic_slot(index: int) -> str:
    return f"0x{FIRST_NIC_SLOT + index:x}"


FIRST_HOSTDEV_SLOT = 0x18  # passed-through devices: after the disks (0x10-0x17)


def hostdev_slot(index: int) -> str:
    return f"0x{FIRST_HOSTDEV_SLOT + index:x}"


@dataclass(frozen=True)
class RenderedDisk:
    disk: Disk
    source: DiskSource
    cache: CacheFlags
    node: str
    throttle_limits: Sequence[tuple[str, int]]
    pci_slot: str
    iothread: str | None
    own_iothread: bool

    @property
    def served_by(self) -> str:
        return self.disk.served_by

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def format(self) -> str:
        return self.source.format

    @property
    def protocol(self) -> str:
        return self.source.protocol

    @property
    def socket(self) -> Path:
        if self.source.socket is None:
            raise ValueError(f"disk {self.disk.name}: no vhost-user socket resolved")
        return self.source.socket

    @property
    def wwpn(self) -> str:
        if self.source.wwpn is None:
            raise ValueError(f"disk {self.disk.name}: no vhost-scsi WWPN resolved")
        return self.source.wwpn


@dataclass(frozen=True)
class Rendered:
    """Everything needed to launch a case; saved to the run directory before it runs."""

    case_id: str
    argv: list[str]
    accel: str


def pci_slot(index: int) -> str:
    """Disks get fixed PCI slots, so the guest can find a disk that has no serial by address."""
    return f"0x{FIRST_DISK_SLOT + index:x}"


def cache_flags(mode: str) -> CacheFlags:
    return _CACHE_MODES[mode]


def rendered_disk(index: int, disk: Disk, source: DiskSource) -> RenderedDisk:
    limits: list[tuple[str, int]] = []
    node = f"fmt-{disk.name}"
    if disk.throttle is not None:
        node = f"disk-{disk.name}"
        for field, key in (
            ("iops_total", "x-iops-total"),
            ("iops_read", "x-iops-read"),
            ("iops_write", "x-iops-write"),
            ("bps_total", "x-bps-total"),
        ):
            value = getattr(disk.throttle, field)
            if value is not None:
                limits.append((key, value))
    if disk.iothread is True:
        iothread: str | None = f"iot-disk-{disk.name}"
    elif isinstance(disk.iothread, str):
        iothread = f"iot-{disk.iothread}"
    else:
        iothread = None
    return RenderedDisk(
        disk=disk,
        source=source,
        cache=_CACHE_MODES[disk.cache],
        node=node,
        throttle_limits=limits,
        pci_slot=pci_slot(index),
        iothread=iothread,
        own_iothread=disk.iothread is True,
    )


def memory_object(guest: Guest) -> str | None:
    """The -object for guest RAM, or None for QEMU's default anonymous memory.

    vhost-user back ends map guest RAM, so with one present RAM is shared (memfd unless the
    spec picks hugepages or a file) and exactly the size of -m.
    """
    backend = guest.effective_memory_backend
    size = f"{guest.memory_mib}M"
    share = "on" if guest.needs_shared_memory else "off"
    if backend == "memfd":
        return f"memory-backend-memfd,id=mem,size={size},share={share}"
    if backend == "hugepages":
        return f"memory-backend-memfd,id=mem,size={size},share={share},hugetlb=on,hugetlbsize=2M"
    if backend == "file":
        assert guest.memory_path is not None
        return (
            f"memory-backend-file,id=mem,size={size},share={share},"
            f"mem-path={qemu_quote(guest.memory_path)}"
        )
    return None


def mac_address(seed: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from a name."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def render_qemu(
    case: Case,
    *,
    qemu: str,
    accel: str,
    boot: BootImage,
    disks: Mapping[str, DiskSource],
    runtime: GuestRuntime,
) -> Rendered:
    guest = case.variant.guest
    cpu_model = guest.cpu_model or ("host" if accel == "kvm" else "max")
    argv = render_argv(
        "qemu/guest.argv.j2",
        qemu=qemu,
        name=f"vmlab-{case.id}",
        guest=guest,
        accel=accel,
        cpu_model=cpu_model,
        boot=boot,
        rt=runtime,
        mgmt_mac=mac_address(case.id),
        memory=memory_object(guest),
        hostdevs=[normalize_address(a) for a in guest.hostdevs],
        hostdev_slot=hostdev_slot,
        disks=[rendered_disk(i, d, disks[d.name]) for i, d in enumerate(guest.disks)],
    )
    return Rendered(case_id=case.id, argv=argv, accel=accel)
