"""The SPDK targets of one run: one per distinct target the spec's disks name, shared by every
case that uses it, started on first use and stopped when the run ends.

A disk's ``spdk:`` names a target by ``rpc_socket`` (the user runs it; vmlab attaches) or by
``binary`` and ``mem_mib`` (vmlab starts it; no binary: the one :mod:`vmlab.spdk.find` finds).
A target vmlab starts runs on the union of the cpumasks of all the run's disks on it, so each
disk's controller can have its own. A target that died is replaced by a new one (with a new
log) the next time a case asks for it; the cases it died under are failed by then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from vmlab.errors import HostError
from vmlab.plan import Case
from vmlab.spdk.cpumask import check_host_cpumask, parse_cpumask
from vmlab.spdk.find import HOW_TO_GET
from vmlab.spdk.target import SpdkApp, SpdkTarget
from vmlab.spec import Spdk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetKey:
    """Which target a disk's ``spdk:`` means: a user's socket, or an app vmlab starts."""

    rpc_socket: Path | None = None
    binary: str | None = None
    mem_mib: int = 0


def target_key(spdk: Spdk, default_binary: str | None) -> TargetKey:
    if spdk.rpc_socket is not None:
        return TargetKey(rpc_socket=spdk.rpc_socket)
    binary = str(spdk.binary) if spdk.binary is not None else default_binary
    if binary is None:
        raise HostError("no SPDK vhost target found on this host", hint=HOW_TO_GET)
    return TargetKey(binary=binary, mem_mib=spdk.mem_mib)


def spdk_configs(cases: Iterable[Case]) -> list[Spdk]:
    return [
        disk.spdk_target
        for case in cases
        for disk in case.variant.guest.disks
        if disk.target == "spdk"  # never a default: vhost-user-blk defaults to qsd
    ]


def spawned_masks(configs: Iterable[Spdk], default_binary: str | None) -> dict[TargetKey, int]:
    """Every target vmlab starts for these disks, with the cores it runs on."""
    masks: dict[TargetKey, int] = {}
    for spdk in configs:
        if spdk.rpc_socket is None:
            key = target_key(spdk, default_binary)
            masks[key] = masks.get(key, 0) | parse_cpumask(spdk.cpumask)
    return masks


class SpdkTargets:
    """The run's targets; ``with`` it around the run's cases."""

    def __init__(
        self,
        masks: Mapping[TargetKey, int],
        *,
        log_dir: Path,
        default_binary: str | None,
        runtime_root: Path | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.masks = dict(masks)
        self.log_dir = log_dir
        self.default_binary = default_binary
        self.runtime_root = runtime_root
        self.ready_timeout_s = ready_timeout_s
        self.running: dict[TargetKey, SpdkTarget] = {}
        self.started = 0  # targets vmlab started in this run, dead ones included

    @classmethod
    def for_cases(
        cls, cases: Iterable[Case], *, log_dir: Path, default_binary: str | None
    ) -> SpdkTargets:
        masks = spawned_masks(spdk_configs(cases), default_binary)
        return cls(masks, log_dir=log_dir, default_binary=default_binary)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get(self, spdk: Spdk) -> SpdkTarget:
        """The running target for ``spdk``: started (or attached to) now if there is none, or
        if the one there was died."""
        key = target_key(spdk, self.default_binary)
        target = self.running.get(key)
        if target is not None:
            failure = target.failure()
            if failure is None:
                return target
            log.warning("%s; starting a new SPDK target", failure)
            del self.running[key]
            target.stop()
        target = self._new(key, spdk)
        target.__enter__()
        self.running[key] = target
        return target

    def _new(self, key: TargetKey, spdk: Spdk) -> SpdkTarget:
        if key.rpc_socket is not None:
            return SpdkTarget.attach(key.rpc_socket)
        assert key.binary is not None
        mask = self.masks.get(key) or parse_cpumask(spdk.cpumask)
        check_host_cpumask(mask)
        self.started += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{Path(key.binary).name}-{self.started}.log"
        while log_path.exists():  # a resumed run keeps the logs of its first attempt
            self.started += 1
            log_path = self.log_dir / f"{Path(key.binary).name}-{self.started}.log"
        app = SpdkApp(key.binary, cpumask=mask, mem_size_mib=key.mem_mib)
        return SpdkTarget.spawn(
            app,
            log_path=log_path,
            runtime_root=self.runtime_root,
            ready_timeout_s=self.ready_timeout_s,
        )

    def close(self) -> None:
        targets, self.running = list(self.running.values()), {}
        errors: list[BaseException] = []
        for target in reversed(targets):
            try:
                target.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others, then raise the first
                errors.append(exc)
        if errors:
            raise errors[0]
