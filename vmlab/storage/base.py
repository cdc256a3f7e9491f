"""The one interface every disk server implements, and what a server gets to work with."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vmlab.launch.qemu import Deadlines
from vmlab.plan import Case
from vmlab.render.model import DiskSource
from vmlab.results.rundir import CaseDir
from vmlab.spec import Disk

if TYPE_CHECKING:
    from vmlab.errors import VmlabError
    from vmlab.net.lab import LabNetwork
    from vmlab.spdk.targets import SpdkTargets
    from vmlab.storage.guest import GuestCeph


@dataclass(frozen=True)
class Preview:
    """What `vmlab render` shows of a served disk: the source QEMU would connect to (sockets
    and secrets as placeholders) and the server's plan: a sidecar's ``argv`` or the ``steps``
    it would take (none for a disk QEMU opens itself)."""

    source: DiskSource
    title: str = ""
    argv: tuple[str, ...] = ()
    steps: str = ""


@dataclass
class ServeContext:
    """One case's storage at run time: where its artifacts and private files go, the state
    servers share within the case (the in-guest Ceph cluster) and within the run (its SPDK
    targets), and the watchers servers leave: each says why a disk's server died, if it did,
    and the case fails with that at once (vmlab.bench.watch)."""

    case: Case
    case_dir: CaseDir
    deadlines: Deadlines
    private_dir: Path  # 0700, removed with the case: secrets, sockets
    scratch_root: Path  # the run's scratch folder (per-case Ceph clusters go there)
    qsd: str | None  # qemu-storage-daemon, if installed
    lab: LabNetwork | None = None
    stage: Callable[[str], None] = lambda what: None
    guest_ceph: GuestCeph | None = field(default=None)
    spdk: SpdkTargets | None = None
    watchers: list[Callable[[], VmlabError | None]] = field(default_factory=list)


class Server(Protocol):
    """Who serves a disk's bytes to the guest (``Disk.served_by``). The bench calls
    :meth:`serve`, `vmlab render` :meth:`preview`; both plan the same way."""

    name: str

    def preview(self, disk: Disk, source: DiskSource) -> Preview: ...

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        """Make the disk available (start a sidecar, create a target) until ``stack`` closes;
        returns the source QEMU connects to."""
        ...
