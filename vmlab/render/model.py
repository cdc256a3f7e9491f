"""The values templates render: how a guest boots, where its disks' data is, its lab NICs,
and the fixed PCI slots and MACs both renderers (QEMU, libvirt) use."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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
    nics: Sequence[NicPlan] = ()  # the lab NICs under test


@dataclass(frozen=True)
class NicPlan:
    """One lab NIC as the templates render it: a tap (or macvtap) QEMU gets as open ``fds``,
    one per queue (placeholders in a preview, where the lab network does not exist yet)."""

    netdev_id: str
    fds: tuple[str, ...]
    vhost: bool
    mac: str
    model: str
    slot: str


@dataclass(frozen=True)
class RbdTarget:
    """An RBD image as QEMU's rbd block driver opens it (the conf names the keyring)."""

    pool: str
    image: str
    conf: Path
    user: str
    keyring: Path  # where the client's key is (the libvirt launcher reads it)
    key_file: Path | None = None  # the key alone, base64, for QEMU's secret object


@dataclass(frozen=True)
class DiskSource:
    """Where a disk's data is, as the bench resolved it (scratch, overlay, sidecar socket)."""

    path: Path
    format: str = "raw"
    protocol: str = "file"  # QEMU block driver: file | host_device | rbd
    socket: Path | None = None  # vhost-user socket, for disks a sidecar serves
    server_log: Path | None = None  # the log of the sidecar behind ``socket``
    wwpn: str | None = None  # vhost-scsi target, for disks LIO serves
    rbd: RbdTarget | None = None  # for protocol rbd


FIRST_DISK_SLOT = 0x10
FIRST_NIC_SLOT = 0x8  # lab NICs: after mgmt (eth0) and rng, before the disks
PREVIEW_LAB = "vmlab-LABNET"  # `vmlab render`: stands for the lab network made at launch


def nic_slot(index: int) -> str:
    return f"0x{FIRST_NIC_SLOT + index:x}"


FIRST_HOSTDEV_SLOT = 0x18  # passed-through devices: after the disks (0x10-0x17)


def hostdev_slot(index: int) -> str:
    return f"0x{FIRST_HOSTDEV_SLOT + index:x}"


def pci_slot(index: int) -> str:
    """Disks get fixed PCI slots, so the guest can find a disk that has no serial by address."""
    return f"0x{FIRST_DISK_SLOT + index:x}"


def cache_flags(mode: str) -> CacheFlags:
    return _CACHE_MODES[mode]


def mac_address(seed: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from a name."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
