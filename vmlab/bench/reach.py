"""Reaching a booted guest, stage by stage, each with its own deadline:

1. QMP answers (the launcher: vmlab.launch.qemu / vmlab.launch.libvirt);
2. the serial console prints the image's ready marker (the launcher, vmlab.launch.watch);
3. sshd sends its ``SSH-`` banner (user-mode hostfwd accepts TCP before sshd listens);
4. SSH login works, with the guest's host key pinned;
5. the guest proves it is the one just booted (a per-boot nonce on its kernel command line,
   or cloud-init's instance-id) and, for cloud-init guests, cloud-init has finished;
6. what the guest is (kernel, fio, disks by serial) is recorded, and its lab NICs get their
   addresses.

Each stage's time since launch goes into the case's ``timings``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from vmlab.errors import GuestError
from vmlab.guest.boot import BootPlan
from vmlab.guest.cloudinit import check_instance_id, wait_cloud_init
from vmlab.guest.facts import GuestFacts, collect_facts
from vmlab.guest.ssh import GuestSSH, open_banner
from vmlab.launch.base import RunningGuest
from vmlab.launch.qemu import Deadlines
from vmlab.net.lab import LabNic, guest_ifname_command
from vmlab.plan import Case
from vmlab.render.model import hostdev_slot, pci_slot
from vmlab.results.rundir import CaseDir


@dataclass(frozen=True)
class Reach:
    """How to reach one booted guest."""

    vm: RunningGuest
    boot: BootPlan
    key: paramiko.PKey
    nonce: str
    deadlines: Deadlines
    case_dir: CaseDir
    timings: dict[str, float]
    timeout_scale: float = 1.0

    def mark(self, stage: str) -> None:
        self.timings[stage] = time.monotonic() - self.vm.started_at

    def login(self, timeout_s: float, sock: socket.socket | None = None) -> GuestSSH:
        return GuestSSH.connect(
            self.vm.ssh_host,
            self.vm.ssh_port,
            user=self.boot.user,
            key=self.key,
            host_key=self.boot.host_key,
            timeout_s=timeout_s,
            sock=sock,
        )


@contextmanager
def reach(r: Reach, stage: Callable[[str], None]) -> Iterator[GuestSSH]:
    """Stages 3-5: a logged-in SSH session to the guest vmlab just booted."""
    stage("waiting for SSH")
    banner = open_banner(r.vm.ssh_host, r.vm.ssh_port, timeout_s=r.deadlines.banner_s)
    r.mark("banner_s")
    with r.login(r.deadlines.login_s, sock=banner) as ssh:
        r.mark("ssh_ready_s")
        if r.boot.instance_id is not None:
            check_instance_id(ssh, r.boot.instance_id)
            stage("waiting for cloud-init")
            assert r.boot.cloud_init_timeout_s is not None
            status = wait_cloud_init(
                ssh,
                timeout_s=r.boot.cloud_init_timeout_s * r.timeout_scale,
                reconnect=r.login,
                console_log=r.case_dir.file("serial.log"),
            )
            r.case_dir.write_json("cloud-init.json", status)
            r.mark("cloud_init_s")
        else:
            check_identity(ssh, r.nonce)
        yield ssh


def check_identity(ssh: GuestSSH, nonce: str) -> None:
    """The guest on this port is the one we just booted, not a stale one."""
    cmdline = ssh.run("cat /proc/cmdline", timeout_s=30).text
    if f"vmlab.nonce={nonce}" not in cmdline:
        raise GuestError(
            "the guest that answered SSH is not the one vmlab booted",
            hint="a stale guest holds the port: `pkill -f qemu-system` it",
        )


def record_facts(
    ssh: GuestSSH, case: Case, case_dir: CaseDir, *, fio_version: str | None = None
) -> dict[str, str]:
    """Stage 6: what the guest is, saved raw and parsed; its device node per spec disk.
    ``fio_version``: the guest's fio version when the image build knows it."""
    facts = collect_facts(
        ssh,
        save=lambda raw: case_dir.write_bytes("guest-facts.txt", raw),
        fio_version=fio_version,
    )
    case_dir.write_json("guest.json", facts.as_dict())
    return find_disks(case, facts)


def guest_pci(slot: str) -> str:
    """The address the guest reports for a device vmlab put at ``slot`` (``0x10``) of bus 0."""
    return f"0000:00:{int(slot, 16):02x}.0"


def find_disks(case: Case, facts: GuestFacts) -> dict[str, str]:
    """Guest device node per spec disk: by serial, else by the PCI slot vmlab gave it."""
    devices: dict[str, str] = {}
    for index, disk in enumerate(case.variant.guest.disks):
        if disk.guest_is_client:
            continue  # no device: fio's rbd engine in the guest talks to the cluster
        slot = guest_pci(pci_slot(index))
        by_serial = [d.device for d in facts.disks if d.serial == disk.serial]
        by_slot = [d.device for d in facts.disks if d.pci == slot]
        found = by_serial or by_slot
        if len(found) != 1:
            have = ", ".join(f"{d.device} ({d.serial or d.pci})" for d in facts.disks)
            raise GuestError(
                f"disk {disk.name!r} (serial {disk.serial}, PCI {slot}) is "
                f"{'ambiguous' if found else 'not visible'} in the guest; it has: {have or 'none'}",
                hint="the guest kernel may lack the driver for this device model",
            )
        devices[disk.name] = found[0]
    wanted = {job.disk for job in case.jobs}
    guest = case.variant.guest
    for index, (name, address) in enumerate(
        zip(guest.hostdev_names(), guest.hostdevs, strict=True)
    ):
        if name not in wanted:
            continue  # passed through for something other than fio (a NIC, a GPU)
        slot = guest_pci(hostdev_slot(index))
        found = [d.device for d in facts.disks if d.pci == slot]
        if len(found) != 1:
            have = ", ".join(f"{d.device} ({d.pci})" for d in facts.disks)
            raise GuestError(
                f"{name} (host {address}, guest PCI {slot}) has "
                f"{'several block devices' if found else 'no block device'} in the guest; "
                f"it has: {have or 'none'}",
                hint="a fio job needs a passed-through NVMe (or other disk) whose driver the "
                "guest kernel has",
            )
        devices[name] = found[0]
    return devices


def configure_nics(ssh: GuestSSH, nics: Sequence[LabNic]) -> None:
    """Give each lab NIC its address; the guest names NICs by MAC, never by ethN."""
    for nic in nics:
        ifname = ssh.run(guest_ifname_command(nic.mac), timeout_s=30).text.strip()
        if not ifname:
            raise GuestError(
                f"the guest has no NIC with MAC {nic.mac}",
                hint="the guest kernel may lack the NIC model's driver",
            )
        for command in nic.guest_commands(ifname):
            ssh.run(command, timeout_s=30)
