"""Which accelerator really runs vmlab's guests here: KVM only where a guest kernel reaches
userspace under it.

/dev/kvm existing proves nothing. A PVM hypervisor (``kvm_pvm``) runs a 16-bit boot sector but
kills an ordinary guest kernel as it enters long mode (``KVM internal error. Suberror: 1 ...
emulation failure``); a nested KVM may abort QEMU on an MSR it cannot set. So the verdict comes
from two probes under KVM, cheapest first, both with ``-cpu host`` as the bench uses:

1. a 512-byte boot sector that prints a marker on COM1 (can QEMU run a vCPU at all?);
2. the kernel vmlab boots (the default image's) with a one-file initramfs whose ``/init`` prints
   a marker (long mode, paging, interrupts, a user process: what a real guest needs).

KVM is chosen only when both print their marker in time and QMP ``query-kvm`` says it is
enabled; TCG otherwise, with a reason that says what was tried and what failed. The verdict is
cached per host boot, QEMU binary and kernel, and a run that still sees KVM fail under a real
guest writes its TCG verdict back (:func:`remember`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmlab.errors import AccelError, LaunchError
from vmlab.guest.cpio import NewcWriter
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.paths import cache_dir

log = logging.getLogger(__name__)

Accel = Literal["kvm", "tcg"]
PROBE_MARKER = "VMLAB-PROBE-OK"
PROBE_FORMAT = 2  # bump when what the probes prove changes: old cached verdicts are ignored
SECTOR_TIMEOUT_S = 5.0
KERNEL_TIMEOUT_S = 10.0  # a guest kernel reaches /init in about a second under a working KVM
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 rdinit=/init i8042.noaux i8042.nomux"
KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


# --- the probe guests ------------------------------------------------------------------------


def boot_sector() -> bytes:
    """A 512-byte MBR that writes PROBE_MARKER to COM1 and halts (16-bit real mode)."""
    msg = (PROBE_MARKER + "\r\n").encode() + b"\0"
    code = bytes(
        [
            0xFA,  # cli
            *(0x31, 0xC0),  # xor ax, ax
            *(0x8E, 0xD8),  # mov ds, ax
            *(0xBE, 0x16, 0x7C),  # mov si, 0x7c16 (msg)
            *(0xBA, 0xF8, 0x03),  # mov dx, 0x3f8
            0xAC,  # loop: lodsb
            *(0x84, 0xC0),  # test al, al
            *(0x74, 0x03),  # jz done
            0xEE,  # out dx, al
            *(0xEB, 0xF8),  # jmp loop
            0xF4,  # done: hlt
            *(0xEB, 0xFD),  # jmp done
        ]
    )
    assert len(code) == 0x16
    sector = code + msg
    return sector + b"\0" * (510 - len(sector)) + b"\x55\xaa"


_ELF_BASE = 0x400000
_ELF_HEADERS = 64 + 56  # one ELF64 header, one program header


def probe_init() -> bytes:
    """A static x86-64 ELF for /init: write(1, PROBE_MARKER) then exit(0). 150-odd bytes, no
    libc, no dynamic loader: the kernel opens /dev/console as fds 0-2 for it. When init exits
    the kernel panics, and with ``panic=-1`` and ``-no-reboot`` QEMU exits by itself."""
    msg = (PROBE_MARKER + "\n").encode()
    code = b"".join(
        [
            b"\xb8\x01\x00\x00\x00",  # mov eax, 1 (write)
            b"\xbf\x01\x00\x00\x00",  # mov edi, 1 (stdout: /dev/console)
            b"\x48\x8d\x35" + struct.pack("<i", 18),  # lea rsi, [rip + 18] (msg)
            b"\xba" + struct.pack("<I", len(msg)),  # mov edx, len
            b"\x0f\x05",  # syscall
            b"\xb8\x3c\x00\x00\x00",  # mov eax, 60 (exit)
            b"\x31\xff",  # xor edi, edi
            b"\x0f\x05",  # syscall
            b"\xeb\xfe",  # jmp $ (never reached)
        ]
    )
    assert len(code) == 35  # the lea's displacement above counts from its end (byte 17)
    body = code + msg
    size = _ELF_HEADERS + len(body)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9  # 64-bit, little endian, SysV
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident,
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,
        _ELF_BASE + _ELF_HEADERS,  # entry: the code right after the headers
        64,  # program headers right after this one
        0,
        0,
        64,
        56,
        1,
        0,
        0,
        0,
    )
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, _ELF_BASE, _ELF_BASE, size, size, 0x1000)
    return header + program + body


def probe_initramfs() -> bytes:
    """A newc initramfs of two members: /dev/console and the probe /init."""
    buf = io.BytesIO()
    with NewcWriter(buf) as cpio:
        cpio.add_chardev("dev/console", 5, 1, 0o600)
        cpio.add_bytes("init", probe_init(), 0o755)
    return buf.getvalue()


@dataclass(frozen=True)
class ProbeOutcome:
    ok: bool
    detail: str  # what happened, in QEMU's words when it failed
    seconds: float = 0.0


def _probe_argv(qemu: str, accel: Accel, guest_dir: Path, boot: list[str]) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"  # as the bench renders it
    return [
        qemu,
        *("-machine", f"q35,accel={accel}", "-cpu", cpu, "-m", "128"),
        *("-nodefaults", "-display", "none", "-no-reboot"),
        *("-chardev", f"socket,id=qmp,path={guest_dir / 'qmp.sock'},server=on,wait=off"),
        *("-mon", "chardev=qmp,mode=control"),
        *("-chardev", f"file,id=serial0,path={guest_dir / 'serial.log'}"),
        *("-serial", "chardev:serial0"),
        *boot,
    ]


def run_probe(
    qemu: str, boot: Callable[[Path], list[str]], *, timeout_s: float, accel: Accel = "kvm"
) -> ProbeOutcome:
    """Boot one probe guest (``boot`` writes its files into the guest dir and returns the argv
    that boots them) and wait for PROBE_MARKER. Under ``tcg`` only to test the probe itself."""
    guest_dir = new_guest_dir()
    try:
        argv = _probe_argv(qemu, accel, guest_dir, boot(guest_dir))
        deadlines = Deadlines(
            qmp_s=timeout_s, boot_s=timeout_s, banner_s=0, login_s=0, powerdown_s=0.2, quit_s=2.0
        )
        try:
            with QemuProcess(
                argv,
                guest_dir=guest_dir,
                qmp_socket=guest_dir / "qmp.sock",
                serial_log=guest_dir / "serial.log",
                qemu_log=guest_dir / "qemu.log",
                deadlines=deadlines,
                accel=accel,
            ) as vm:
                seconds = vm.wait_serial(PROBE_MARKER)
                if accel == "kvm" and not vm.kvm.get("enabled"):
                    return ProbeOutcome(False, "QMP query-kvm reports KVM not enabled")
                return ProbeOutcome(True, "ran", seconds)
        except AccelError as exc:
            return ProbeOutcome(False, exc.detail)
        except LaunchError as exc:
            return ProbeOutcome(False, exc.message)
    finally:
        shutil.rmtree(guest_dir, ignore_errors=True)


def probe_sector(qemu: str) -> ProbeOutcome:
    def boot(guest_dir: Path) -> list[str]:
        disk = guest_dir / "probe.img"
        # A one-sector disk is unreadable for SeaBIOS's AHCI driver: pad it to 1 MiB.
        disk.write_bytes(boot_sector().ljust(1 << 20, b"\0"))
        return ["-drive", f"file={disk},format=raw,if=ide"]

    return run_probe(qemu, boot, timeout_s=SECTOR_TIMEOUT_S)


def probe_kernel(
    qemu: str, kernel: Path, *, accel: Accel = "kvm", timeout_s: float = KERNEL_TIMEOUT_S
) -> ProbeOutcome:
    def boot(guest_dir: Path) -> list[str]:
        initrd = guest_dir / "probe-initrd.img"
        initrd.write_bytes(probe_initramfs())
        return ["-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_CMDLINE]

    return run_probe(qemu, boot, timeout_s=timeout_s, accel=accel)


# --- the verdict -----------------------------------------------------------------------------


def kvm_module(sys_module: Path = Path("/sys/module")) -> str | None:
    """The KVM vendor module that is loaded (kvm_intel, kvm_amd or kvm_pvm), if any."""
    return next((m for m in KVM_MODULES if (sys_module / m).is_dir()), None)


def decide(
    *,
    kvm_usable: bool,
    module: str | None,
    sector: Callable[[], ProbeOutcome],
    kernel: Callable[[], ProbeOutcome] | None,
) -> tuple[Accel, str]:
    """The verdict from the probes, run in order and only as far as needed."""
    if not kvm_usable:
        return "tcg", "/dev/kvm is absent or not accessible"
    first = sector()
    if not first.ok:
        return "tcg", f"/dev/kvm exists but not even a boot sector runs under it: {first.detail}"
    if kernel is None:
        return "tcg", (
            "/dev/kvm runs a boot sector, but no guest kernel is built yet to prove it with "
            "(`vmlab image build`)"
        )
    second = kernel()
    if not second.ok:
        why = f"/dev/kvm runs a boot sector but the guest kernel dies under it: {second.detail}"
        if module == "kvm_pvm":
            why += " (kvm_pvm: a PVM hypervisor runs only guest kernels built for PVM)"
        return "tcg", why
    return "kvm", f"a guest kernel reached userspace under KVM in {second.seconds:.1f} s"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def cache_key(qemu: str, qemu_version: str | None, kernel: Path | None) -> str:
    try:
        stat = kernel.stat() if kernel else None
    except OSError:
        stat = None
    identity = f"{kernel}:{stat.st_size}:{stat.st_mtime_ns}" if stat else "no-kernel"
    return f"{PROBE_FORMAT}:{_boot_id()}:{qemu}:{qemu_version}:{identity}"


def _cache_file() -> Path:
    return cache_dir() / "accel.json"


MAX_VERDICTS = 32  # kernels (images, trees, versions) one boot of this host may probe


def _verdicts() -> dict[str, dict[str, object]]:
    """The cached verdicts by key: several kernels (two vmlab trees, the default image and a
    rootfs one) each keep theirs. A file of another shape (the one-verdict format) is empty."""
    try:
        saved = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    verdicts = saved.get("verdicts") if isinstance(saved, dict) else None
    if not isinstance(verdicts, dict):
        return {}
    return {k: v for k, v in verdicts.items() if isinstance(v, dict)}


def remember(key: str, accel: Accel, reason: str) -> None:
    """Cache a verdict (the probe's, or a run's that saw KVM fail under a real guest), beside
    the others of this boot (other boots' are dropped: they prove nothing now), written whole
    and renamed into place so that concurrent runs never read half a file."""
    boot = f"{PROBE_FORMAT}:{_boot_id()}:"
    verdicts = {k: v for k, v in _verdicts().items() if k.startswith(boot) and k != key}
    verdicts[key] = {"accel": accel, "reason": reason}
    kept = dict(list(verdicts.items())[-MAX_VERDICTS:])  # the newest, this one last
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"verdicts": kept}))
        tmp.replace(path)
    except OSError as exc:
        log.debug("cannot cache the accelerator verdict: %s", exc)


def _cached(key: str) -> tuple[Accel, str] | None:
    saved = _verdicts().get(key)
    if saved is None:
        return None
    accel, reason = saved.get("accel"), saved.get("reason")
    if not isinstance(reason, str):
        return None
    if accel == "kvm":
        return "kvm", reason
    if accel == "tcg":
        return "tcg", reason
    return None


def detect_accel(
    qemu: str, qemu_version: str | None, kernel: Path | None, *, use_cache: bool = True
) -> tuple[Accel, str]:
    """The accelerator that really boots vmlab's guests here, and why."""
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    key = cache_key(qemu, qemu_version, kernel)
    if kvm_usable and use_cache and (hit := _cached(key)) is not None:
        return hit[0], f"{hit[1]} (cached for this boot)"
    accel, reason = decide(
        kvm_usable=kvm_usable,
        module=kvm_module(),
        sector=lambda: probe_sector(qemu),
        kernel=(lambda: probe_kernel(qemu, kernel)) if kernel is not None else None,
    )
    if kvm_usable and kernel is not None:
        remember(key, accel, reason)
    return accel, reason


def kvm_note(module: str | None, accel: Accel, *, kvm_device: bool) -> str:
    """One line for `vmlab host check`: what this host's KVM is and what it means for a user."""
    if not kvm_device:
        return (
            "no /dev/kvm: guests run under TCG (load kvm_intel or kvm_amd, or enable nested "
            "virtualisation on the outer hypervisor)"
        )
    if module == "kvm_pvm":
        return (
            "kvm_pvm: /dev/kvm is a PVM hypervisor, which runs only guest kernels built for "
            "PVM; vmlab runs its guests under TCG here (slower, every result says tcg)"
        )
    name = module or "KVM"
    if accel == "tcg":
        return (
            f"{name} is loaded but cannot run an ordinary guest kernel here; vmlab runs its "
            "guests under TCG (slower, every result says tcg)"
        )
    nested = _nested(module)
    return f"{name}{f' (nested={nested})' if nested else ''}: guests run under KVM"


def _nested(module: str | None) -> str | None:
    if module is None:
        return None
    try:
        return Path(f"/sys/module/{module}/parameters/nested").read_text().strip()
    except OSError:
        return None
