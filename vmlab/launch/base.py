"""What every launcher (QEMU directly, libvirt) gives the bench: a booted guest to reach."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from vmlab.launch.qemu import Deadlines
from vmlab.net.lab import LabNic
from vmlab.plan import Case
from vmlab.render.model import BootImage, DiskSource
from vmlab.results.rundir import CaseDir


@dataclass(frozen=True)
class LaunchRequest:
    case: Case
    case_dir: CaseDir
    accel: str
    boot: BootImage
    disks: Mapping[str, DiskSource]
    deadlines: Deadlines
    ready_marker: str
    failed_marker: str
    nics: Sequence[LabNic] = ()


def needs_acpi(boot: BootImage) -> bool:
    """Whether the guest must power off through ACPI before QEMU quits.

    A guest whose root file system is on a disk (rootfs and cloud images) unmounts it first.
    The default guest lives in its initramfs: the disks under test hold nothing to keep beyond
    what QMP ``quit`` itself writes (QEMU drains and flushes every block device as it exits),
    so waiting for the guest's power button handler is only seconds lost per case."""
    return boot.root_disk is not None


class RunningGuest(Protocol):
    """A guest that printed its readiness marker; SSH is reachable at ssh_host:ssh_port."""

    ssh_host: str
    ssh_port: int
    started_at: float
    timings: dict[str, float]
    accel_info: dict[str, Any]


class Launcher(Protocol):
    name: str
    # False: lab NICs come as tap/macvtap fds opened in the lab namespace (QEMU inherits them).
    # True: the launcher makes its own tap/macvtap on a host-side port of the lab network.
    host_side_nics: bool

    def launch(self, request: LaunchRequest) -> AbstractContextManager[RunningGuest]:
        """Boot the guest and wait for its serial marker; stop it on exit, on every path."""
        ...
