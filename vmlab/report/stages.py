"""Where a case's seconds went: its stored stage marks (``timings`` in the case's status.json,
written by vmlab.bench.case) as consecutive durations that add up to the case's wall time.

Marks are seconds since QEMU started (``serial_ready_s``, ``ssh_ready_s``, ...), except
``prepare_s`` (before the launch), ``workload_s`` (what the jobs were asked to measure),
``shutdown_s`` and ``total_s``, which are durations. A run from before a mark existed simply
lacks that stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# (stage, the mark it ends at), in boot order; each starts where the previous present one ended
_MARKS = (
    ("QEMU up, QMP answers", "qmp_s"),
    ("kernel + /init to ready marker", "serial_ready_s"),
    ("SSH banner", "banner_s"),
    ("SSH login + identity", "ssh_ready_s"),
    ("cloud-init", "cloud_init_s"),
    ("guest facts, NICs", "facts_s"),
)


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    overhead: bool = True  # False: the measurement itself


def case_stages(timings: Mapping[str, float]) -> list[Stage]:
    """The case's stages in order; empty if the case recorded no launch."""
    if "serial_ready_s" not in timings:
        return []
    stages: list[Stage] = []
    if "prepare_s" in timings:
        stages.append(Stage("prepare (boot image, disks, sidecars)", timings["prepare_s"]))
    at = 0.0
    for name, mark in _MARKS:
        if mark in timings:
            stages.append(Stage(name, timings[mark] - at))
            at = timings[mark]
    if "jobs_done_s" in timings:
        jobs_s = timings["jobs_done_s"] - at
        workload = timings.get("workload_s")
        if workload is not None:
            stages.append(Stage("jobs: asked runtime", workload, overhead=False))
            stages.append(Stage("jobs: beyond their runtime", jobs_s - workload))
        else:
            stages.append(Stage("jobs", jobs_s, overhead=False))
    if "shutdown_s" in timings:
        stages.append(Stage("shutdown (guest, disks, sidecars)", timings["shutdown_s"]))
    if "total_s" in timings:
        rest = timings["total_s"] - sum(s.seconds for s in stages)
        if abs(rest) >= 0.005:
            stages.append(Stage("other", rest))
    return stages


def overhead_s(stages: list[Stage]) -> float:
    return sum(s.seconds for s in stages if s.overhead)
