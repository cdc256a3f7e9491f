"""Before any guest starts: everything the plan needs that this host lacks, all at once.

A bench that would fail on its fourth case because hugepages are not reserved should fail
before its first, naming every missing piece and how to get it.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from vmlab import hugepages, vfio
from vmlab.errors import HostError, VmlabError
from vmlab.host import HostFacts, pick_accel
from vmlab.metrics import BASELINE_ID
from vmlab.plan import Case
from vmlab.proc import run
from vmlab.spdk.cpumask import describe_mask, host_mask, parse_cpumask
from vmlab.spdk.find import HOW_TO_GET as SPDK_HOW_TO_GET
from vmlab.spdk.targets import spawned_masks, spdk_configs
from vmlab.spec import BlockBackend, Disk, FileBackend, Guest, RbdBackend, Spdk
from vmlab.storage import lio as vhost_scsi


def _disk_problems(disk: Disk, facts: HostFacts, sysroot: Path) -> list[str]:
    problems: list[str] = []
    backend = disk.backend
    where = f"disk {disk.name}"
    if isinstance(backend, BlockBackend):
        try:
            if not stat.S_ISBLK(backend.path.stat().st_mode):
                problems.append(
                    f"{where}: {backend.path} is not a block device "
                    "(use backend type file for regular files)"
                )
        except OSError:
            problems.append(f"{where}: block device {backend.path} does not exist")
    elif isinstance(backend, FileBackend) and backend.path and not backend.path.exists():
        problems.append(
            f"{where}: {backend.path} does not exist "
            "(leave path out for a scratch file vmlab makes)"
        )
    elif isinstance(backend, RbdBackend):
        problems += _rbd_problems(
            where,
            backend,
            qemu_driver=disk.served_by in ("qemu", "qsd"),
            host_krbd=disk.host_krbd,
        )
    served = disk.served_by
    if served == "qsd" and facts.qemu_storage_daemon is None:
        problems.append(
            f"{where}: vhost-user-blk needs qemu-storage-daemon: apt-get install qemu-utils"
        )
    elif served == "spdk":
        problems += [f"{where}: {p}" for p in _spdk_problems(disk.spdk_target, facts, sysroot)]
    elif served == "lio":
        backstore: Literal["block", "fileio"] = (
            "block" if isinstance(backend, BlockBackend) else "fileio"
        )
        for problem in vhost_scsi.preflight(sysroot, backstore=backstore):
            problems.append(f"{where}: kernel vhost-scsi: {problem.message} ({problem.fix})")
    return problems


@functools.cache
def qemu_block_drivers() -> frozenset[str]:
    """Formats QEMU's block layer supports here (rbd comes from qemu-block-extra)."""
    try:
        out = run(["qemu-img", "--help"], timeout_s=30, check=False).out
    except VmlabError:
        return frozenset()
    for line in out.splitlines():
        if line.startswith("Supported formats:"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _spdk_problems(spdk: Spdk, facts: HostFacts, sysroot: Path) -> list[str]:
    if spdk.rpc_socket is not None:
        if not spdk.rpc_socket.exists():
            return [
                f"no SPDK RPC socket at {spdk.rpc_socket} (start SPDK's vhost first, or leave "
                "rpc_socket out and vmlab starts it)"
            ]
        return []
    problems = []
    binary = str(spdk.binary) if spdk.binary is not None else facts.spdk_vhost
    if binary is None:
        problems.append(f"no SPDK vhost target found: {SPDK_HOW_TO_GET}")
    elif not os.access(binary, os.X_OK):
        problems.append(f"SPDK binary {binary} is not executable")
    mask = parse_cpumask(spdk.cpumask)
    if mask & ~host_mask():
        problems.append(
            f"SPDK cpumask {describe_mask(mask)} names cores vmlab may not use "
            f"(it may use {describe_mask(host_mask())})"
        )
    if not hugepages.can_mount() and not hugepages.hugetlbfs_mounts(sysroot / "proc/mounts"):
        problems.append(
            "SPDK maps its memory from a hugetlbfs mount and none is mounted: as root, "
            "mount -t hugetlbfs nodev /dev/hugepages (vmlab run as root mounts its own)"
        )
    return problems


def _rbd_problems(
    where: str, backend: RbdBackend, *, qemu_driver: bool, host_krbd: bool
) -> list[str]:
    problems = []
    if qemu_driver and "rbd" not in qemu_block_drivers():
        problems.append(f"{where}: QEMU has no rbd block driver: apt-get install qemu-block-extra")
    if host_krbd and not Path("/sys/bus/rbd").is_dir():
        problems.append(
            f"{where}: krbd needs the kernel RBD driver: modprobe rbd (this "
            "kernel has none: use QEMU's librbd, backend.krbd: false)"
        )
    cluster = backend.cluster
    if cluster.is_micro:
        if shutil.which("ceph-mon") is None:
            problems.append(
                f"{where}: the micro Ceph cluster needs Ceph: apt-get install "
                "--no-install-recommends ceph-mon ceph-osd ceph-mgr ceph-common"
            )
    else:
        assert cluster.conf is not None
        for what, path in (("ceph.conf", cluster.conf), ("keyring", cluster.keyring)):
            if path is not None and not path.is_file():
                problems.append(f"{where}: the cluster's {what} {path} does not exist")
    return problems


def _guest_problems(
    guest: Guest, facts: HostFacts, host_cpus: set[int], sysroot: Path
) -> list[str]:
    problems: list[str] = []
    if guest.effective_memory_backend == "hugepages":
        need = hugepages.pages_for(guest.memory_mib)
        problems += _hugepage_problems("memory_backend hugepages", need, facts, sysroot)
    if guest.hostdevs:
        report = vfio.check_passthrough(guest.hostdevs, root=sysroot, memory_mib=guest.memory_mib)
        problems += [f"VFIO: {p.message} ({p.hint})" for p in report.all_problems]
    if guest.nics:
        if os.geteuid() != 0:
            problems.append("lab NICs need root (network namespaces, taps, macvtap nodes)")
        if shutil.which("ip") is None:
            problems.append("lab NICs need iproute2: apt-get install iproute2")
        if not Path("/dev/net/tun").exists():
            problems.append("lab NICs need /dev/net/tun: modprobe tun")
        if shutil.which("iperf3") is None:
            problems.append(
                "lab NICs: net_jobs run iperf3 -s in the lab namespace: apt-get install iperf3"
            )
        if any(n.vhost for n in guest.nics) and not facts.vhost_net:
            problems.append(
                "vhost: true needs /dev/vhost-net (modprobe vhost_net); QEMU 7.2 "
                "aborts instead of falling back"
            )
    path = guest.memory_path
    if guest.memory_backend == "file" and path is not None and not path.is_dir():
        problems.append(f"memory_path {path} is not a directory")
    wanted = set(guest.vcpu_pinning or [])
    wanted |= {t.cpu for t in guest.iothreads if t.cpu is not None}
    wanted |= {d.iothread_cpu for d in guest.disks if d.iothread_cpu is not None}
    if missing := sorted(wanted - host_cpus):
        problems.append(
            f"pinning names host CPUs {missing}, but vmlab may only use {sorted(host_cpus)}"
        )
    return problems


def _hugepage_problems(what: str, need: int, facts: HostFacts, sysroot: Path) -> list[str]:
    """Whether ``need`` more hugepages can be had: vmlab reserves them itself where it may
    (and the memory is there), else they must be free already."""
    sysfs = sysroot / hugepages.SYSFS.relative_to("/")
    if hugepages.can_reserve(sysfs):
        available_mib = _mem_available_mib(sysroot)
        if available_mib is not None and need * hugepages.PAGE_MIB > available_mib:
            return [
                f"{what} needs {need} 2 MiB hugepages ({need * hugepages.PAGE_MIB} MiB), the "
                f"host has {available_mib} MiB of memory available"
            ]
        return []
    if facts.hugepages_2m_free >= need:
        return []
    return [
        f"{what} needs {need} free 2 MiB hugepages, the host has "
        f"{facts.hugepages_2m_free} free of {facts.hugepages_2m_total}: "
        f"echo {facts.hugepages_2m_total + need - facts.hugepages_2m_free} "
        f"> {hugepages.SYSFS / 'nr_hugepages'} (or run vmlab as root: it reserves them)"
    ]


def _mem_available_mib(sysroot: Path) -> int | None:
    try:
        for line in (sysroot / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def hugepages_needed(cases: Sequence[Case], facts: HostFacts) -> int:
    """The 2 MiB hugepages a run needs at most at once: every SPDK target vmlab starts (they
    live for the whole run) plus the largest hugepage-backed guest (cases run one at a time)."""
    try:
        targets = spawned_masks(spdk_configs(cases), facts.spdk_vhost)
    except VmlabError:  # no SPDK found: preflight says so
        targets = {}
    spdk = sum(hugepages.pages_for(key.mem_mib) for key in targets)
    guests = [
        hugepages.pages_for(case.variant.guest.memory_mib)
        for case in cases
        if case.variant.guest.effective_memory_backend == "hugepages"
    ]
    return spdk + max(guests, default=0)


def plan_problems(
    cases: Sequence[Case],
    facts: HostFacts,
    *,
    sysroot: Path = Path("/"),
    accel_override: str | None = None,
) -> dict[str, list[str]]:
    """What each case needs that this host lacks (cases that can run are left out)."""
    host_cpus = os.sched_getaffinity(0)
    problems: dict[str, list[str]] = {}
    for case in cases:
        found: list[str] = []
        try:
            pick_accel(facts, accel_override or case.variant.accel)
        except VmlabError as exc:
            found.append(exc.message)
        guest = case.variant.guest
        found += _guest_problems(guest, facts, host_cpus, sysroot)
        for disk in guest.disks:
            found += _disk_problems(disk, facts, sysroot)
        if found:
            problems[case.id] = list(dict.fromkeys(found))
    return problems


def check_plan(
    cases: Sequence[Case],
    facts: HostFacts,
    *,
    sysroot: Path = Path("/"),
    accel_override: str | None = None,
    baseline: bool = False,
) -> None:
    """Raise one HostError listing every problem of every case, or return quietly."""
    problems = plan_problems(cases, facts, sysroot=sysroot, accel_override=accel_override)
    need = 0 if problems else hugepages_needed(cases, facts)
    if need and (found := _hugepage_problems("the run", need, facts, sysroot)):
        problems["run"] = found  # its SPDK targets and its largest guest together
    if baseline and facts.fio_version is None:
        problems[BASELINE_ID] = ["the host baseline runs fio on the host: apt-get install fio"]
    if problems:
        lines = [f"{case}: {p}" for case, found in problems.items() for p in found]
        raise HostError(
            f"this host cannot run {len(problems)} of the {len(cases) + baseline} cases:\n  "
            + "\n  ".join(lines),
            hint="fix the above, drop those cases from the spec, or pass --skip-unsupported "
            "to run the rest; nothing was started",
        )
