"""A planned case as the QEMU argv that runs it (templates/qemu/guest.argv.j2, one token per
line)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import SpecError
from vmlab.net.lab import LabNic
from vmlab.plan import Case
from vmlab.qemuopts import qemu_quote
from vmlab.render import render_argv
from vmlab.render.model import (
    PREVIEW_LAB,
    BootImage,
    CacheFlags,
    DiskSource,
    GuestRuntime,
    NicPlan,
    cache_flags,
    hostdev_slot,
    mac_address,
    nic_slot,
    pci_slot,
)
from vmlab.spec import Disk, Guest
from vmlab.vfio import normalize_address


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
        cache=cache_flags(disk.cache),
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


def nic_plans(guest: Guest, nics: Sequence[LabNic] | None) -> list[NicPlan]:
    """The guest's lab NICs, in spec order at fixed slots: from the fds vmlab opened in the lab
    namespace, or (``nics`` None, for `vmlab render`) with placeholders for them."""
    plans = []
    for index, spec in enumerate(guest.nics):
        if spec.attach == "network":
            raise SpecError(
                f"NIC {spec.name}: attach network is a libvirt network, which QEMU alone "
                "cannot join",
                hint="use launcher libvirt (or --launcher libvirt), or attach tap",
            )
        if nics is not None:
            nic = nics[index]
            netdev_id, mac, fds = nic.netdev_id, nic.mac, tuple(str(fd) for fd in nic.fds)
        else:
            netdev_id = f"lab{index}"
            mac = mac_address(f"{PREVIEW_LAB}/{spec.name}")
            fds = tuple(f"<{spec.attach}-fd-{q}>" for q in range(spec.queues))
        if not fds:
            raise ValueError(f"NIC {spec.name}: no fds (a host-side port is libvirt's)")
        plans.append(
            NicPlan(
                netdev_id=netdev_id,
                fds=fds,
                vhost=spec.vhost,
                mac=mac,
                model=spec.model,
                slot=nic_slot(index),
            )
        )
    return plans


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
