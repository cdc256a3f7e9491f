"""Pin vCPU and iothread threads to host CPUs, by the thread ids QEMU reports over QMP.

QEMU has no command-line pinning; libvirt does the same thing through sched_setaffinity.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vmlab.errors import LaunchError
from vmlab.spec import Guest

log = logging.getLogger(__name__)


def wanted_pinning(guest: Guest) -> tuple[dict[int, int], dict[str, int]]:
    """(vCPU index -> host CPU, iothread id -> host CPU) as the spec asks."""
    vcpus = dict(enumerate(guest.vcpu_pinning or []))
    iothreads = {f"iot-{t.name}": t.cpu for t in guest.iothreads if t.cpu is not None}
    for disk in guest.disks:
        if disk.iothread is True and disk.iothread_cpu is not None:
            iothreads[f"iot-disk-{disk.name}"] = disk.iothread_cpu
    return vcpus, iothreads


def apply_pinning(qmp: Any, guest: Guest) -> dict[str, dict[str, int]]:
    """Pin what the spec asks for; returns {kind: {name: host cpu}} as applied."""
    vcpus, iothreads = wanted_pinning(guest)
    applied: dict[str, dict[str, int]] = {"vcpus": {}, "iothreads": {}}
    if not vcpus and not iothreads:
        return applied
    if vcpus:
        for cpu in qmp.cmd("query-cpus-fast"):
            index = int(cpu["cpu-index"])
            if index in vcpus:
                _pin(int(cpu["thread-id"]), vcpus[index], f"vCPU {index}")
                applied["vcpus"][str(index)] = vcpus[index]
    if iothreads:
        threads = {t["id"]: int(t["thread-id"]) for t in qmp.cmd("query-iothreads")}
        for name, cpu in iothreads.items():
            if name not in threads:
                raise LaunchError(f"QEMU reports no iothread {name} to pin")
            _pin(threads[name], cpu, f"iothread {name}")
            applied["iothreads"][name] = cpu
    return applied


def _pin(thread_id: int, cpu: int, what: str) -> None:
    try:
        os.sched_setaffinity(thread_id, {cpu})
    except OSError as exc:
        raise LaunchError(f"cannot pin {what} (thread {thread_id}) to CPU {cpu}: {exc}") from exc
    log.debug("pinned %s (thread %d) to CPU %d", what, thread_id, cpu)
