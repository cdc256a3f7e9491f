"""What a booted guest says it is: kernel, distro, fio, CPUs, memory, and its disks by serial
and PCI address (templates/guest/facts.sh prints it; parsed here into typed facts)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmlab.errors import GuestError
from vmlab.guest.ssh import GuestSSH
from vmlab.resources import template_file


@dataclass(frozen=True)
class GuestDisk:
    device: str  # /dev/vdb
    serial: str | None
    queues: int | None
    pci: str | None


@dataclass(frozen=True)
class GuestFacts:
    kernel: str
    distro: str
    fio: str
    cpus: int | None
    memory_kib: int | None
    disks: tuple[GuestDisk, ...]
    raw: str

    def by_serial(self, serial: str) -> GuestDisk:
        found = [d for d in self.disks if d.serial == serial]
        if len(found) != 1:
            have = ", ".join(f"{d.device} ({d.serial or d.pci})" for d in self.disks) or "none"
            raise GuestError(
                f"{'several disks have' if found else 'no disk has'} serial {serial!r}; "
                f"the guest has: {have}",
                hint="the guest kernel may lack the driver for this device model",
            )
        return found[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "distro": self.distro,
            "fio": self.fio,
            "cpus": self.cpus,
            "memory_kib": self.memory_kib,
            "disks": {
                d.device: {"serial": d.serial, "queues": d.queues, "pci": d.pci} for d in self.disks
            },
        }


def _int_or_none(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def parse_facts(text: str) -> GuestFacts:
    """Parse what templates/guest/facts.sh prints."""
    fields: dict[str, str] = {}
    disks: list[GuestDisk] = []
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "disk":
            parts = rest.split()
            if len(parts) >= 2:
                disks.append(
                    GuestDisk(
                        device=parts[1],
                        serial=None if parts[0] == "-" else parts[0],
                        queues=_int_or_none(parts[2]) if len(parts) > 2 else None,
                        pci=parts[3] if len(parts) > 3 and parts[3] != "-" else None,
                    )
                )
        elif key:
            fields[key] = rest.strip()
    return GuestFacts(
        kernel=fields.get("kernel", ""),
        distro=fields.get("distro", "unknown"),
        fio=fields.get("fio", "missing"),
        cpus=_int_or_none(fields.get("cpus", "")),
        memory_kib=_int_or_none(fields.get("memory_kib", "")),
        disks=tuple(disks),
        raw=text,
    )


def collect_facts(
    ssh: GuestSSH,
    *,
    timeout_s: float = 60,
    save: Callable[[bytes], object] | None = None,
    fio_version: str | None = None,
) -> GuestFacts:
    """Run templates/guest/facts.sh in the guest through ``sh -s`` (stdin: no SFTP needed, any
    POSIX sh: busybox ash, dash, bash) and parse it; ``save`` gets the raw output first.
    ``fio_version``: the guest's fio is known (the default image ran it at build time), so the
    script does not start fio again just to ask."""
    script = template_file("guest/facts.sh").read_bytes()
    command = "sh -s"
    if fio_version is not None:
        command = f"VMLAB_FIO_VERSION={shlex.quote(fio_version)} sh -s"
    result = ssh.run(command, stdin=script, timeout_s=timeout_s, check=False)
    if save is not None:
        save(result.stdout)
    if result.exit_code != 0:
        err = result.stderr.decode(errors="replace").strip()[-400:]
        raise GuestError(f"{ssh.where}: the facts script exited {result.exit_code}: {err}")
    return parse_facts(result.text)
