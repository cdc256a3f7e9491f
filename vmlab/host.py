"""Read-only probes of the host: what QEMU is here, which accelerator really works, what's missing.

/dev/kvm existing proves nothing (a nested hypervisor may expose one that boots no guest), so
the accelerator is decided by booting a probe guest under KVM with a short deadline: a boot
sector that prints a marker on the serial port. KVM is chosen only when that marker appears and
QMP `query-kvm` confirms KVM is enabled; TCG otherwise. The verdict is cached per boot of the
host and QEMU binary.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from vmlab.errors import LaunchError, VmlabError
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.paths import cache_dir

log = logging.getLogger(__name__)

PROBE_MARKER = "VMLAB-PROBE-OK"


class Missing(BaseModel):
    model_config = ConfigDict(frozen=True)
    what: str
    fix: str
    needed_for: str


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
    accel: Literal["kvm", "tcg"]
    accel_reason: str
    kvm_device: bool
    vhost_net: bool
    iommu_groups: int
    hugepages_2m_total: int
    hugepages_2m_free: int
    missing: list[Missing]


def boot_sector() -> bytes:
    """A 512-byte MBR that writes PROBE_MARKER to COM1 and halts (16-bit real mode)."""
    msg = (PROBE_MARKER + "\r\n").encode() + b"\0"
    code = bytes(
        [
            0xFA,  # cli
            0x31,
            0xC0,  # xor ax, ax
            0x8E,
            0xD8,  # mov ds, ax
            0xBE,
            0x16,
            0x7C,  # mov si, 0x7c16 (msg)
            0xBA,
            0xF8,
            0x03,  # mov dx, 0x3f8
            0xAC,  # loop: lodsb
            0x84,
            0xC0,  # test al, al
            0x74,
            0x03,  # jz done
            0xEE,  # out dx, al
            0xEB,
            0xF8,  # jmp loop
            0xF4,  # done: hlt
            0xEB,
            0xFD,  # jmp done
        ]
    )
    assert len(code) == 0x16
    sector = code + msg
    return sector + b"\0" * (510 - len(sector)) + b"\x55\xaa"


def _version(argv: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else None


def probe_accel(qemu: str, accel: str, *, timeout_s: float = 8.0) -> tuple[bool, str]:
    """Boot the probe sector under `accel`; (True, why) only if it ran and QMP agrees."""
    guest_dir = new_guest_dir()
    try:
        disk = guest_dir / "probe.img"
        # A one-sector disk is unreadable for SeaBIOS's AHCI driver: pad it to 1 MiB.
        disk.write_bytes(boot_sector().ljust(1 << 20, b"\0"))
        serial, qmp = guest_dir / "serial.log", guest_dir / "qmp.sock"
        cpu = "host" if accel == "kvm" else "max"
        argv = [
            qemu,
            "-machine",
            f"q35,accel={accel}",
            "-cpu",
            cpu,
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            f"socket,id=qmp,path={qmp},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            f"file,id=serial0,path={serial}",
            "-serial",
            "chardev:serial0",
            "-drive",
            f"file={disk},format=raw,if=ide",
        ]
        deadlines = Deadlines(
            qmp_s=timeout_s, boot_s=timeout_s, banner_s=0, login_s=0, powerdown_s=0.2, quit_s=2.0
        )
        try:
            with QemuProcess(
                argv,
                guest_dir=guest_dir,
                qmp_socket=qmp,
                serial_log=serial,
                qemu_log=guest_dir / "qemu.log",
                deadlines=deadlines,
            ) as vm:
                seconds = vm.wait_serial(PROBE_MARKER)
                enabled = bool(vm.kvm.get("enabled"))
                if accel == "kvm" and not enabled:
                    return False, "QMP query-kvm reports KVM not enabled"
                return True, f"probe guest booted under {accel} in {seconds:.1f} s"
        except LaunchError as exc:
            return False, f"probe guest did not boot under {accel}: {exc.message}"
    finally:
        shutil.rmtree(guest_dir, ignore_errors=True)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def detect_accel(
    qemu: str,
    qemu_version: str | None,
    *,
    use_cache: bool = True,
) -> tuple[str, str]:
    """The accelerator that really boots guests here, and why."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is absent or not accessible"
    cache = cache_dir() / "accel.json"
    key = f"{_boot_id()}:{qemu}:{qemu_version}"
    if use_cache:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return str(saved["accel"]), str(saved["reason"]) + " (cached for this boot)"
        except (OSError, ValueError, KeyError):
            pass
    ok, why = probe_accel(qemu, "kvm")
    accel, reason = ("kvm", why) if ok else ("tcg", f"/dev/kvm exists but {why}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "accel": accel, "reason": reason}))
    except OSError as exc:
        log.debug("cannot cache accel verdict: %s", exc)
    return accel, reason


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


def check_host(*, probe: bool = True, use_cache: bool = True) -> HostFacts:
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
    if qemu is None:
        accel, reason = "tcg", "QEMU is not installed"
    elif probe:
        accel, reason = detect_accel(qemu, qemu_version, use_cache=use_cache)
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
        kvm_device=Path("/dev/kvm").exists(),
        vhost_net=vhost_net,
        iommu_groups=iommu,
        hugepages_2m_total=total,
        hugepages_2m_free=free,
        missing=missing,
    )


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
            f"the spec asks for KVM, but {facts.accel_reason}",
            hint="use accel: auto (or tcg), or run on a host where KVM boots guests",
        )
    return wanted


def scratch_root() -> Path:
    """Where scratch disks go: a real disk (not tmpfs), removed at the end of each run."""
    base = os.environ.get("VMLAB_SCRATCH")
    return Path(base) if base else Path(tempfile.gettempdir()) / "vmlab-scratch"
