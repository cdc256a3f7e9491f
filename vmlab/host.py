"""Read-only probes of the host: what QEMU is here, which accelerator really works (see
:mod:`vmlab.accel`), what is missing and how to get it.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from vmlab.accel import Accel, detect_accel, kvm_module, kvm_note
from vmlab.errors import VmlabError
from vmlab.proc import run
from vmlab.spdk.find import HOW_TO_GET as SPDK_HOW_TO_GET
from vmlab.spdk.find import find_spdk

log = logging.getLogger(__name__)


class Missing(BaseModel):
    model_config = ConfigDict(frozen=True)
    what: str
    fix: str
    needed_for: str


class AccelSwitch(BaseModel):
    """A run that started under KVM, saw it fail under a real guest, and went on under TCG."""

    model_config = ConfigDict(frozen=True)
    from_accel: Literal["kvm"] = "kvm"
    case: str  # the case whose guest KVM failed under
    error: str  # QEMU's words
    probed_reason: str  # why the probe had said KVM
    at: str  # ISO time


# Kernel modules the lab's paths need (vhost-net, LIO vhost-scsi, krbd, VFIO); reported as
# present when loaded, built in, or loadable from /lib/modules/$(uname -r).
LAB_MODULES = ("vhost_net", "vhost_scsi", "target_core_mod", "rbd", "vfio_pci", "tun")


class NestedHost(BaseModel):
    """The L1 host that served a nested run's cases (vmlab.nested), as seen from outside and in."""

    model_config = ConfigDict(frozen=True)
    label: str  # nested/<label>/ and hosts/<label>.json in the run
    kernel_package: str  # what the spec asked for (linux-image-amd64)
    kernel: str  # L1's uname -r
    image_key: str
    accel: Accel  # how this host ran L1
    accel_reason: str
    l2_accel: str | None = None  # how L1 ran the guests
    vhost_net: bool = False
    kernel_modules: dict[str, bool] = {}


class HostFacts(BaseModel):
    model_config = ConfigDict(frozen=True)
    hostname: str
    kernel: str
    cpus: int
    memory_mib: int
    qemu: str | None
    qemu_version: str | None
    qemu_img: str | None
    qemu_storage_daemon: str | None
    fio_version: str | None
    accel: Accel
    accel_reason: str
    kvm_device: bool
    kvm_module: str | None = None  # kvm_intel, kvm_amd or kvm_pvm
    kvm_note: str = ""  # what this host's KVM is and what it means, in one line
    accel_switch: AccelSwitch | None = None  # set when a run found KVM failing under a guest
    vhost_net: bool
    iommu_groups: int
    hugepages_2m_total: int
    hugepages_2m_free: int
    missing: list[Missing]
    spdk_vhost: str | None = None  # SPDK's vhost target (vmlab.spdk.find), for target: spdk
    spdk_version: str | None = None
    spdk_found_by: str | None = None  # VMLAB_SPDK, PATH or the build-spdk prefix
    kernel_modules: dict[str, bool] = {}  # LAB_MODULES: present (loaded or loadable) or not
    nested: list[NestedHost] = []  # the L1 hosts that ran the cases (hypervisor: nested)


def kernel_modules(
    names: tuple[str, ...] = LAB_MODULES, *, root: Path = Path("/"), release: str | None = None
) -> dict[str, bool]:
    """Which of ``names`` this kernel has: loaded (/sys/module), built in or loadable."""
    moddir = root / "lib/modules" / (release or platform.release())
    known: set[str] = set()
    for index in ("modules.dep", "modules.builtin"):
        try:
            text = (moddir / index).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            path = line.split(":", 1)[0].strip()
            if path:
                known.add(Path(path).name.split(".ko", 1)[0].replace("-", "_"))
    return {n: (root / "sys/module" / n).is_dir() or n in known for n in names}


def _version(argv: list[str], pattern: str) -> str | None:
    try:
        done = run(argv, timeout_s=10, check=False)
    except VmlabError:
        return None
    match = re.search(pattern, done.out + done.err)
    return match.group(1) if match else None


def _hugepages() -> tuple[int, int]:
    base = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    try:
        return int((base / "nr_hugepages").read_text()), int((base / "free_hugepages").read_text())
    except (OSError, ValueError):
        return 0, 0


def _memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def check_host(
    *, probe: bool = True, use_cache: bool = True, kernel: Path | None = None
) -> HostFacts:
    """What this host has. ``kernel`` is the guest kernel KVM must run to be chosen (default:
    the cached default image's; without one, KVM cannot be proven and TCG is chosen)."""
    qemu = shutil.which("qemu-system-x86_64")
    qemu_img = shutil.which("qemu-img")
    qsd = shutil.which("qemu-storage-daemon")
    fio = shutil.which("fio")
    missing: list[Missing] = []
    if qemu is None:
        missing.append(
            Missing(
                what="qemu-system-x86_64",
                needed_for="every guest",
                fix="apt-get install qemu-system-x86",
            )
        )
    if qemu_img is None or qsd is None:
        missing.append(
            Missing(
                what="qemu-img / qemu-storage-daemon",
                fix="apt-get install qemu-utils",
                needed_for="qcow2 disks, vhost-user-blk",
            )
        )
    if fio is None:
        missing.append(Missing(what="fio", fix="apt-get install fio", needed_for="host baseline"))
    qemu_version = _version([qemu, "--version"], r"version (\S+)") if qemu else None
    accel: Accel
    if qemu is None:
        accel, reason = "tcg", "QEMU is not installed"
    elif probe:
        accel, reason = detect_accel(
            qemu, qemu_version, kernel or _default_kernel(), use_cache=use_cache
        )
    else:
        accel, reason = "tcg", "not probed"
    vhost_net = Path("/dev/vhost-net").exists()
    if not vhost_net:
        missing.append(
            Missing(
                what="/dev/vhost-net", fix="modprobe vhost_net", needed_for="tap NICs with vhost=on"
            )
        )
    groups = Path("/sys/kernel/iommu_groups")
    iommu = len(list(groups.iterdir())) if groups.is_dir() else 0
    if iommu == 0:
        missing.append(
            Missing(
                what="IOMMU",
                needed_for="VFIO passthrough",
                fix="boot with intel_iommu=on (or amd_iommu=on) iommu=pt",
            )
        )
    total, free = _hugepages()
    spdk = find_spdk()
    if spdk is None:
        missing.append(Missing(what="SPDK vhost", fix=SPDK_HOW_TO_GET, needed_for="target: spdk"))
    module = kvm_module()
    kvm_device = Path("/dev/kvm").exists()
    return HostFacts(
        hostname=socket.gethostname(),
        kernel=platform.release(),
        cpus=os.cpu_count() or 1,
        memory_mib=_memory_mib(),
        qemu=qemu,
        qemu_version=qemu_version,
        qemu_img=qemu_img,
        qemu_storage_daemon=qsd,
        fio_version=_version([fio, "--version"], r"fio-(\S+)") if fio else None,
        accel=accel,
        accel_reason=reason,
        kvm_device=kvm_device,
        kvm_module=module,
        kvm_note=kvm_note(module, accel, kvm_device=kvm_device),
        vhost_net=vhost_net,
        iommu_groups=iommu,
        hugepages_2m_total=total,
        hugepages_2m_free=free,
        missing=missing,
        spdk_vhost=str(spdk.vhost) if spdk else None,
        spdk_version=spdk.version if spdk else None,
        spdk_found_by=spdk.how if spdk else None,
        kernel_modules=kernel_modules(),
    )


def _default_kernel() -> Path | None:
    from vmlab.guest.image import find_image  # the image module is heavy: only when probing

    image = find_image()
    return image.kernel if image is not None else None


def require_qemu(facts: HostFacts) -> str:
    if facts.qemu is None:
        raise VmlabError(
            "qemu-system-x86_64 is not installed", hint="apt-get install qemu-system-x86 qemu-utils"
        )
    return facts.qemu


def pick_accel(facts: HostFacts, wanted: str) -> str:
    """Resolve a spec's accel ('auto' | 'kvm' | 'tcg') against what works here."""
    if wanted == "auto":
        return facts.accel
    if wanted == "kvm" and facts.accel != "kvm":
        raise VmlabError(
            f"KVM was asked for (--accel kvm or accel: kvm), but {facts.accel_reason}",
            hint="leave the accelerator to vmlab (no --accel, accel: auto) and it uses TCG "
            "here; or run on a host where KVM boots guests",
        )
    return wanted


def scratch_root() -> Path:
    """Where scratch disks go: a real disk (not tmpfs), removed at the end of each run."""
    base = os.environ.get("VMLAB_SCRATCH")
    return Path(base) if base else Path(tempfile.gettempdir()) / "vmlab-scratch"
