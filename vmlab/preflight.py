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

from vmlab import vfio
from vmlab.errors import HostError, VmlabError
from vmlab.host import HostFacts, pick_accel
from vmlab.metrics import BASELINE_ID
from vmlab.plan import Case
from vmlab.proc import run
from vmlab.spec import BlockBackend, Disk, FileBackend, Guest, RbdBackend
from vmlab.storage import lio as vhost_scsi

HUGEPAGE_MIB = 2


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
        problems += _rbd_problems(where, backend)
    served = disk.served_by
    if served == "qsd" and facts.qemu_storage_daemon is None:
        problems.append(
            f"{where}: vhost-user-blk needs qemu-storage-daemon: apt-get install qemu-utils"
        )
    elif served == "spdk" and disk.spdk is not None:
        if disk.spdk.binary is not None and not os.access(disk.spdk.binary, os.X_OK):
            problems.append(f"{where}: SPDK binary {disk.spdk.binary} is not executable")
        if disk.spdk.rpc_socket is not None and not disk.spdk.rpc_socket.exists():
            problems.append(
                f"{where}: no SPDK RPC socket at {disk.spdk.rpc_socket} "
                "(start spdk_tgt/vhost first, or give spdk.binary)"
            )
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


def _rbd_problems(where: str, backend: RbdBackend) -> list[str]:
    problems = []
    if "rbd" not in qemu_block_drivers():
        problems.append(f"{where}: QEMU has no rbd block driver: apt-get install qemu-block-extra")
    if backend.krbd and not Path("/sys/bus/rbd").is_dir():
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
        need = -(-guest.memory_mib // HUGEPAGE_MIB)
        if facts.hugepages_2m_free < need:
            problems.append(
                f"memory_backend hugepages needs {need} free 2 MiB hugepages, the host has "
                f"{facts.hugepages_2m_free} free of {facts.hugepages_2m_total}: "
                f"echo {facts.hugepages_2m_total + need - facts.hugepages_2m_free} "
                "> /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
            )
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
