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
