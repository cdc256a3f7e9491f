"""Render a planned case into libvirt domain XML: the same guest as the QEMU argv.

The XML comes from ``templates/libvirt/domain.xml.j2``, rendered with autoescape and
StrictUndefined. Values that end up inside a QEMU
``key=value,...`` option string (``<qemu:arg>``) are comma-escaped with ``|q`` first and
XML-escaped by autoescape after.

In libvirt's own XML: direct kernel boot, memory and its backing (memfd, hugepages, shared for
vhost-user), vCPUs, CPU mode, iothreads and their pinning, vCPU pinning, virtio-blk and
virtio-scsi disks on files, block devices or RBD images (cache, io, discard, queues, iotune;
RBD as ``<disk type='network'>`` whose Ceph key is in an ephemeral private libvirt secret the
launcher defines, never in the XML), vhost-user-blk (``<disk type='vhostuser'>``), kernel
vhost-scsi (a ``scsi_host`` hostdev), the boot disk overlay and NoCloud seed of rootfs and cloud
guests (firmware boot when there is no kernel), virtio-rng and the serial console to a file.

What libvirt 9.0 (Debian 12) cannot say goes through ``<qemu:commandline>`` or
``<qemu:override>``, which taints the domain (libvirt logs "Domain id=N is tainted:
custom-argv"); nothing else changes. Those are, and why:

* the management NIC: user-mode networking with ``hostfwd`` (libvirt's ``<interface
  type='user'>`` has port forwarding only with the passt backend) — the same ``-netdev user``
  and ``virtio-net-pci`` as the QEMU launcher;
* NVMe disks: libvirt 9.0 has no ``nvme`` disk bus — the same ``-blockdev`` chain and ``-device
  nvme`` as the QEMU launcher;
* ``queue_size`` of a virtio-scsi controller and ``num_queues`` of vhost-scsi: no attribute for
  them — device property overrides.

Refused (SpecError): ``memory_backend: file`` (libvirt keeps file-backed RAM in qemu.conf's
``memory_backing_dir``, not at a per-domain path).

Every PCI device sits on ``pcie.0`` where the QEMU launcher puts it (NIC at 01, virtio-rng at
02, disks at :func:`vmlab.render.pci_slot`), so libvirt adds no pcie-root-ports and the guest
sees the same topology through both launchers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from vmlab.errors import SpecError
from vmlab.net.lab import LabNic, LibvirtNetwork
from vmlab.net.netns import host_side_name
from vmlab.plan import Case
from vmlab.render import environment
from vmlab.render.model import (
    FIRST_HOSTDEV_SLOT,
    FIRST_NIC_SLOT,
    PREVIEW_LAB,
    BootImage,
    CacheFlags,
    DiskSource,
    RbdTarget,
    cache_flags,
    mac_address,
    pci_slot,
)
from vmlab.spec import Disk, Guest
from vmlab.vfio import libvirt_hostdev

DOMAIN_TEMPLATE = "libvirt/domain.xml.j2"
SECRET_TEMPLATE = "libvirt/secret.xml.j2"  # noqa: S105 - a template name
NETWORK_TEMPLATE = "libvirt/network.xml.j2"
INTERFACE_TYPES = {"tap": "bridge", "macvtap": "direct", "network": "network"}  # by attach
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
OWNER_NS = "urn:x-vmlab:owner:1"  # our <metadata> element: who started the domain
OWNER_PREFIX = "vmlab"
NAME_PREFIX = "vmlab-"
NIC_SLOT = 1  # QEMU auto-assigns these two, in -device order, before the disks' fixed slots
RNG_SLOT = 2
LAST_SLOT = 0x1E  # 00:1f.x is q35's ICH9 (LPC, SATA, SMBus)
HUGEPAGE_KIB = 2048  # the QEMU path's hugetlbsize=2M
ROOT_DISK_SLOT = 0x0E  # where templates/qemu/guest.argv.j2 puts a rootfs/cloud boot disk
SEED_SLOT = 0x0F  # ... and the NoCloud seed

# libvirt <iotune> element per Throttle field (the QEMU path uses x-iops-total etc.)
_IOTUNE = (
    ("iops_total", "total_iops_sec"),
    ("iops_read", "read_iops_sec"),
    ("iops_write", "write_iops_sec"),
    ("bps_total", "total_bytes_sec"),
)
_QEMU_THROTTLE = (
    ("iops_total", "x-iops-total"),
    ("iops_read", "x-iops-read"),
    ("iops_write", "x-iops-write"),
    ("bps_total", "x-bps-total"),
)


def xml_environment() -> jinja2.Environment:
    return environment(xml=True, trim=True)


@dataclass(frozen=True)
class Owner:
    """Who started a domain: lets a later run tell a crashed run's leftovers from a live one."""

    host: str
    boot_id: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid from the owner
    run_id: str
    case_id: str


@dataclass(frozen=True)
class DomainRuntime:
    """Per-launch values: the domain name, where the serial log goes, the SSH port."""

    name: str
    serial_log: Path
    ssh_port: int
    owner: Owner
    # QEMU's uid:gid as a static DAC label ("+0:+0"), relabel off; None: libvirt's default user
    dac_label: str | None = None
    emulator: str | None = None


@dataclass(frozen=True)
class IOThreadSlot:
    """One libvirt iothread (ids count from 1) and the host CPU it is pinned to."""

    id: int
    cpu: int | None


@dataclass(frozen=True)
class LibvirtDisk:
    """One disk with everything the template needs already decided."""

    disk: Disk
    source: DiskSource
    cache: CacheFlags
    slot: int
    iothread_id: int | None
    target: str | None  # vda.. / sda..; None where libvirt has no disk for it (NVMe, vhost-scsi)
    scsi_index: int | None
    iotune: Sequence[tuple[str, int]]
    qemu_throttle: Sequence[tuple[str, int]]
    secret_usage: str | None = None  # RBD through librbd: the libvirt secret with the key

    @property
    def protocol(self) -> str:
        """QEMU block driver (templates/qemu/_blockdev.j2 reads these two, for NVMe)."""
        return self.source.protocol

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def node(self) -> str:
        """The top -blockdev node of an NVMe disk's chain (QEMU launcher naming)."""
        return f"disk-{self.disk.name}" if self.qemu_throttle else f"fmt-{self.disk.name}"

    @property
    def kind(self) -> str:
        """libvirt <disk type=...>: file, block (host_device), network (rbd) or vhostuser."""
        if self.disk.model == "vhost-user-blk":
            return "vhostuser"
        if self.source.protocol == "rbd":
            return "network"
        return "block" if self.source.protocol == "host_device" else "file"


@dataclass(frozen=True)
class Interface:
    """A lab NIC as libvirt attaches it in the host namespace: ``bridge`` (libvirt's tap on the
    lab's host-side bridge), ``direct`` (a macvtap in bridge mode on the host-side parent) or
    ``network`` (libvirt's tap on the NIC's own libvirt network; ``dev`` is its name)."""

    alias: str
    type: str
    dev: str
    mac: str
    model: str  # libvirt <model type>: virtio | e1000e
    queues: int
    vhost: bool
    slot: int


@dataclass(frozen=True)
class BootDisk:
    """The boot disk overlay or the NoCloud seed of a rootfs or cloud guest."""

    name: str  # root | seed: the serial is vmlab-<name>, as on the QEMU path
    path: Path
    format: str
    read_only: bool
    slot: int
    target: str
    boot_order: int | None  # firmware boot (no kernel): the root disk boots first


@dataclass(frozen=True)
class RenderedDomain:
    """The domain XML of one case; saved to the run directory before it is defined."""

    case_id: str
    name: str
    xml: str
    accel: str
    taints: tuple[str, ...] = field(default=())  # why <qemu:...> passthrough was needed
    # (secret usage name, RBD image) per network disk: the launcher defines each secret first
    secrets: tuple[tuple[str, RbdTarget], ...] = field(default=())


def hex_slot(slot: int) -> str:
    return f"0x{slot:02x}"


def _limits(disk: Disk, table: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    if disk.throttle is None:
        return []
    out = []
    for attr, key in table:
        value = getattr(disk.throttle, attr)
        if value is not None:
            out.append((key, int(value)))
    return out


def _letters(index: int) -> str:
    """0 → a, 25 → z, 26 → aa (disk target names)."""
    text = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        text = chr(ord("a") + rem) + text
    return text


def iothread_slots(guest: Guest) -> tuple[list[IOThreadSlot], dict[str, int]]:
    """libvirt iothreads in the QEMU launcher's order: the shared pool, then each disk's own.

    Returns the iothreads and, per disk name, the id its device uses.
    """
    slots = [IOThreadSlot(i, t.cpu) for i, t in enumerate(guest.iothreads, start=1)]
    pool = {t.name: i for i, t in enumerate(guest.iothreads, start=1)}
    by_disk: dict[str, int] = {}
    for disk in guest.disks:
        if disk.iothread is True:
            slots.append(IOThreadSlot(len(slots) + 1, disk.iothread_cpu))
            by_disk[disk.name] = len(slots)
        elif isinstance(disk.iothread, str):
            by_disk[disk.name] = pool[disk.iothread]
    return slots, by_disk


def rbd_secret_usage(domain: str, disk: str) -> str:
    """The usage name of the libvirt secret holding an RBD disk's Ceph key (starts ``vmlab-``)."""
    return f"{domain}-{disk}"


def libvirt_disks(
    guest: Guest, sources: Mapping[str, DiskSource], *, domain: str
) -> list[LibvirtDisk]:
    """The data disks; RBD through librbd becomes a network disk whose key is in the secret
    named by :func:`rbd_secret_usage` (the launcher defines it)."""
    _, iothreads = iothread_slots(guest)
    out: list[LibvirtDisk] = []
    virtio = scsi = 0
    for index, disk in enumerate(guest.disks):
        if disk.guest_is_client:  # the guest reaches the cluster over its lab NIC
            continue
        slot = int(pci_slot(index), 16)
        if slot > LAST_SLOT:
            raise SpecError(
                f"too many disks for one PCIe root bus: {len(guest.disks)} "
                f"(disk {disk.name} would need slot {slot:#x})",
                hint=f"use at most {LAST_SLOT - int(pci_slot(0), 16) + 1} disks per guest",
            )
        target, scsi_index = None, None
        if disk.model in ("virtio-blk", "vhost-user-blk"):
            target = f"vd{_letters(virtio)}"
            virtio += 1
        elif disk.model == "virtio-scsi":
            target, scsi_index = f"sd{_letters(scsi)}", scsi
            scsi += 1
        out.append(
            LibvirtDisk(
                disk=disk,
                source=sources[disk.name],
                cache=cache_flags(disk.cache),
                slot=slot,
                iothread_id=iothreads.get(disk.name),
                target=target,
                scsi_index=scsi_index,
                secret_usage=(
                    rbd_secret_usage(domain, disk.name)
                    if sources[disk.name].protocol == "rbd"
                    and disk.model in ("virtio-blk", "virtio-scsi")
                    else None
                ),
                iotune=_limits(disk, _IOTUNE),
                qemu_throttle=_limits(disk, _QEMU_THROTTLE),
            )
        )
    return out


def interfaces(guest: Guest, nics: Sequence[LabNic] | None) -> list[Interface]:
    """The guest's lab NICs as libvirt interfaces, in spec order, at the QEMU launcher's slots.

    ``nics`` None (``vmlab render``): placeholder names, as the lab network is made at launch.
    """
    if nics is not None and (len(nics) != len(guest.nics) or any(n.fds for n in nics)):
        raise ValueError("libvirt attaches lab NICs on host-side ports: use add_host_port")
    out = []
    for index, spec in enumerate(guest.nics):
        if nics is not None:
            nic = nics[index]
            netdev_id, mac = nic.netdev_id, nic.mac
            dev = nic.network.name if nic.network is not None else nic.ifname
        else:
            netdev_id, mac = f"lab{index}", mac_address(f"{PREVIEW_LAB}/{spec.name}")
            lab = PREVIEW_LAB.removeprefix("vmlab-")
            prefix = "lb" if spec.attach == "tap" else "lm"
            dev = (
                f"vmlab-net-PID-TICKS-{lab}-{index}"
                if spec.attach == "network"
                else host_side_name(prefix, PREVIEW_LAB)
            )
        out.append(
            Interface(
                alias=f"ua-nic-{netdev_id}",
                type=INTERFACE_TYPES[spec.attach],
                dev=dev,
                mac=mac,
                model="virtio" if spec.model == "virtio-net-pci" else spec.model,
                queues=spec.queues,
                vhost=spec.vhost,
                slot=FIRST_NIC_SLOT + index,
            )
        )
    return out


def boot_disks(boot: BootImage, disks: Sequence[LibvirtDisk]) -> list[BootDisk]:
    """Root overlay and seed as virtio-blk at the QEMU launcher's slots, after the data disks'
    targets (libvirt's target names are only unique keys; the guest names disks itself)."""
    virtio = sum(1 for d in disks if d.target is not None and d.target.startswith("vd"))
    out: list[BootDisk] = []
    if boot.root_disk is not None:
        order = None if boot.kernel else 1
        target = f"vd{_letters(virtio)}"
        out.append(BootDisk("root", boot.root_disk, "qcow2", False, ROOT_DISK_SLOT, target, order))
        virtio += 1
    if boot.seed is not None:
        target = f"vd{_letters(virtio)}"
        out.append(BootDisk("seed", boot.seed, "raw", True, SEED_SLOT, target, None))
    return out


def memory_backing(guest: Guest) -> tuple[str, bool] | None:
    """(libvirt memory source, shared) for the QEMU path's memory backend; None for default."""
    backend = guest.effective_memory_backend
    if backend == "default":
        return None
    if backend == "file":
        raise SpecError(
            "the libvirt launcher cannot put guest RAM under memory_path: libvirt keeps "
            "file-backed RAM in the daemon's memory_backing_dir (qemu.conf), not per domain",
            hint="use memory_backend memfd or hugepages, or launcher qemu for this case",
        )
    return "memfd", guest.needs_shared_memory


def cpu_mode(accel: str, cpu_model: str | None) -> tuple[str, str | None]:
    """(libvirt cpu mode, custom model): the QEMU launcher's -cpu host / max / <model>."""
    model = cpu_model or ("host" if accel == "kvm" else "max")
    if model == "host":
        return "host-passthrough", None
    if model == "max":
        return "maximum", None  # libvirt >= 7.1
    return "custom", model


def _taints(disks: Sequence[LibvirtDisk]) -> tuple[str, ...]:
    why = ["management NIC: user-mode networking with hostfwd (<qemu:commandline>)"]
    if any(d.disk.model == "nvme" for d in disks):
        why.append("NVMe: libvirt 9.0 has no nvme disk bus (<qemu:commandline>)")
    if any(d.disk.model == "virtio-scsi" and d.disk.queue_size for d in disks):
        why.append("virtio-scsi queue_size: no libvirt attribute (<qemu:override>)")
    if any(d.disk.model == "vhost-scsi" and d.disk.num_queues for d in disks):
        why.append("vhost-scsi num_queues: no libvirt attribute (<qemu:override>)")
    return tuple(why)


def domain_name(run_id: str, case_id: str) -> str:
    """``vmlab-<run>-<case>``; long names are shortened with a hash so they stay unique."""
    name = f"{NAME_PREFIX}{run_id}-{case_id}"
    if len(name) <= 100:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:89]}-{digest}"


def render_libvirt(
    case: Case,
    *,
    accel: str,
    boot: BootImage,
    disks: Mapping[str, DiskSource],
    runtime: DomainRuntime,
    nics: Sequence[LabNic] | None = None,
) -> RenderedDomain:
    """The domain XML for one case, from the same models as :func:`vmlab.render.render_qemu`.

    ``nics``: the case's lab NICs from :meth:`vmlab.net.lab.LabNetwork.add_host_port`; None
    renders placeholders (``vmlab render``: the lab network exists only while a case runs).
    """
    guest = case.variant.guest
    mode, model = cpu_mode(accel, guest.cpu_model)
    rendered_disks = libvirt_disks(guest, disks, domain=runtime.name)
    iothreads, _ = iothread_slots(guest)
    xml = (
        xml_environment()
        .get_template(DOMAIN_TEMPLATE)
        .render(
            name=runtime.name,
            domain_type="kvm" if accel == "kvm" else "qemu",
            guest=guest,
            cpu_mode=mode,
            cpu_model=model,
            boot=boot,
            rt=runtime,
            owner_ns=OWNER_NS,
            owner_prefix=OWNER_PREFIX,
            mgmt_mac=mac_address(case.id),
            disks=rendered_disks,
            boot_disks=boot_disks(boot, rendered_disks),
            interfaces=interfaces(guest, nics),
            iothreads=iothreads,
            memory=memory_backing(guest),
            hugepage_kib=HUGEPAGE_KIB,
            hex_slot=hex_slot,
            nic_slot=NIC_SLOT,
            rng_slot=RNG_SLOT,
            qemu_ns=QEMU_NS,
            hostdevs=[libvirt_hostdev(a) for a in guest.hostdevs],
            hostdev_slot0=FIRST_HOSTDEV_SLOT,
        )
    )
    return RenderedDomain(
        case_id=case.id,
        name=runtime.name,
        xml=xml,
        accel=accel,
        taints=_taints(rendered_disks),
        secrets=tuple(
            (d.secret_usage, d.source.rbd)
            for d in rendered_disks
            if d.secret_usage is not None and d.source.rbd is not None
        ),
    )


def render_network(net: LibvirtNetwork) -> str:
    """The transient ``<network>`` of a lab NIC with ``attach: network``."""
    return xml_environment().get_template(NETWORK_TEMPLATE).render(net=net)


def render_secret(*, usage_name: str, description: str, usage: str = "ceph") -> str:
    """A private, ephemeral ``<secret>`` (its value is set with ``setValue`` after define)."""
    return (
        xml_environment()
        .get_template(SECRET_TEMPLATE)
        .render(usage=usage, usage_name=usage_name, description=description)
    )


def preview_runtime(
    case_id: str, *, serial_log: Path, ssh_port: int = 10022, dac_label: str | None = None
) -> DomainRuntime:
    """Placeholder per-launch values for showing a case's XML without launching it."""
    return DomainRuntime(
        name=domain_name("RUN", case_id),
        serial_log=serial_log,
        ssh_port=ssh_port,
        owner=Owner(
            host="preview", boot_id="", pid=0, start_ticks=0, run_id="RUN", case_id=case_id
        ),
        dac_label=dac_label,
    )
