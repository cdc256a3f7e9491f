"""Boot an L1 host: its QEMU argv (:func:`l1_argv`, golden-tested) and :func:`booted_l1`, which
starts it from a throw-away qcow2 overlay of the cached image, waits for its readiness marker
and sshd, logs in, and stops it on every exit path.

L1 runs under the accelerator of the host's verdict (:mod:`vmlab.accel`): KVM with ``-cpu host``
where guests really boot under it (L1 then has a nested KVM of its own), TCG with ``-cpu max``
otherwise. Its disks: the root overlay, the payload (read-only, :mod:`.payload`) and a scratch
disk for the inner run's files, each found in L1 by its virtio serial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from vmlab import proc
from vmlab.guest.image import authkey_cmdline
from vmlab.guest.rootfs import RootfsImage, root_disk_args
from vmlab.guest.ssh import GuestSSH, open_banner, public_line
from vmlab.launch.direct import free_port
from vmlab.launch.qemu import Deadlines, QemuProcess
from vmlab.nested.payload import PAYLOAD_SERIAL
from vmlab.qemuopts import qemu_quote
from vmlab.spec import NestedHypervisor

log = logging.getLogger(__name__)

SCRATCH_SERIAL = "vmlab-scratch"
L1_BOOT_TIMEOUT_S = {"kvm": 120.0, "tcg": 600.0}
L1_LOGIN_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class L1Disks:
    overlay: Path  # qcow2 over the image's base; thrown away with the work directory
    payload: Path
    scratch: Path
    nvme: tuple[Path, ...] = ()  # L1's emulated NVMe drives, for VFIO passthrough to L2


def l1_argv(
    image: RootfsImage,
    hv: NestedHypervisor,
    *,
    accel: str,
    disks: L1Disks,
    guest_dir: Path,
    serial_log: Path,
    ssh_port: int,
    key_line: str,
) -> list[str]:
    """QEMU argv of one L1 host (pure); ``hv`` as planned (its memory filled in)."""
    assert hv.memory_mib is not None, "l1_plans fills in the memory"
    cpu = "host" if accel == "kvm" else "max"
    append = f"{image.cmdline} {authkey_cmdline(key_line)} no_timer_check"
    machine = f"q35,accel={accel}"
    iommu: list[str] = []
    if hv.iommu:  # interrupt remapping needs the split irqchip; caching mode for VFIO in L1
        machine += ",kernel-irqchip=split"
        iommu = ["-device", "intel-iommu,intremap=on,caching-mode=on"]
        append += " intel_iommu=on iommu=pt"
    nvme: list[str] = []
    for index, (drive, address) in enumerate(zip(disks.nvme, hv.nvme_addresses, strict=True)):
        slot = address.split(":")[2].split(".")[0]
        nvme += [
            "-blockdev", f"driver=file,node-name=nvme{index}-file,filename={qemu_quote(drive)}",
            "-blockdev", f"driver=raw,node-name=nvme{index},file=nvme{index}-file",
            "-device", f"nvme,drive=nvme{index},serial=vmlab-l1-nvme{index},addr=0x{slot}",
        ]  # fmt: skip
    return [
        "qemu-system-x86_64", "-name", f"vmlab-l1-{hv.label}",
        "-machine", machine, *iommu, "-cpu", cpu,
        "-m", str(hv.memory_mib), "-smp", str(hv.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-pidfile", str(guest_dir / "qemu.pid"),
        "-chardev", f"socket,id=qmp,path={qemu_quote(str(guest_dir / 'qmp.sock'))},"
        "server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=serial0,path={qemu_quote(str(serial_log))}",
        "-serial", "chardev:serial0",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=mgmt,romfile=",
        "-device", "virtio-rng-pci",
        *root_disk_args(disks.overlay, fmt="qcow2"),
        "-blockdev",
        f"driver=file,node-name=payload-file,filename={qemu_quote(disks.payload)},read-only=on",
        "-blockdev", "driver=raw,node-name=payload,file=payload-file,read-only=on",
        "-device", f"virtio-blk-pci,drive=payload,serial={PAYLOAD_SERIAL}",
        "-blockdev", f"driver=file,node-name=scratch-file,filename={qemu_quote(disks.scratch)}",
        "-blockdev", "driver=raw,node-name=scratch,file=scratch-file",
        "-device", f"virtio-blk-pci,drive=scratch,serial={SCRATCH_SERIAL}",
        *nvme,
    ]  # fmt: skip


def make_overlay(image: RootfsImage, path: Path) -> Path:
    proc.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.base_format, "-b", image.base,
         path],
        timeout_s=60,
    )  # fmt: skip
    return path


@dataclass
class L1Host:
    ssh: GuestSSH
    vm: QemuProcess
    serial_log: Path


@contextmanager
def booted_l1(
    image: RootfsImage,
    hv: NestedHypervisor,
    *,
    accel: str,
    log_dir: Path,
    disk_dir: Path,
    guest_dir: Path,
    payload: Path,
    scratch: Path,
    nvme: tuple[Path, ...] = (),
    key: paramiko.PKey,
    timeout_scale: float = 1.0,
) -> Iterator[L1Host]:
    """L1 booted and logged in; stopped (powerdown, quit, kill) when the block ends. Its logs
    and argv go to ``log_dir`` (kept), its root overlay to ``disk_dir`` (thrown away)."""
    assert image.ready_marker is not None and image.host_key is not None  # the minimal variant
    disks = L1Disks(
        overlay=make_overlay(image, disk_dir / "l1-root.qcow2"),
        payload=payload,
        scratch=scratch,
        nvme=nvme,
    )
    serial = log_dir / "l1-serial.log"
    ssh_port = free_port()
    argv = l1_argv(
        image,
        hv,
        accel=accel,
        disks=disks,
        guest_dir=guest_dir,
        serial_log=serial,
        ssh_port=ssh_port,
        key_line=public_line(key),
    )
    (log_dir / "l1-argv.txt").write_text("\n".join(argv) + "\n")
    with QemuProcess(
        argv,
        guest_dir=guest_dir,
        qmp_socket=guest_dir / "qmp.sock",
        serial_log=serial,
        qemu_log=log_dir / "l1-qemu.log",
        deadlines=Deadlines.for_accel(accel, scale=4.0 * timeout_scale),
        accel=accel,
    ) as vm:
        vm.wait_serial(
            image.ready_marker,
            failed=image.failed_marker,
            timeout_s=L1_BOOT_TIMEOUT_S[accel] * timeout_scale,
        )
        banner = open_banner("127.0.0.1", ssh_port, timeout_s=L1_LOGIN_TIMEOUT_S * timeout_scale)
        with GuestSSH.connect(
            "127.0.0.1",
            ssh_port,
            user=image.user,
            key=key,
            host_key=image.host_key,
            timeout_s=L1_LOGIN_TIMEOUT_S * timeout_scale,
            sock=banner,
        ) as ssh:
            yield L1Host(ssh=ssh, vm=vm, serial_log=serial)
