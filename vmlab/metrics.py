"""The metrics vocabulary: every flat metric a job can report, its unit, which way is better.

fio jobs (storage) and iperf3 jobs (network) report flat ``{name: value}`` dicts named here;
reports, comparisons, gates and the terminal tables look names up here and nowhere else.
Units are in the names (``_ns``, ``_kib_s``, ``_bits_per_s``, ``_pct``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# The case id of fio run on the host against the guest's own backing store: the limit a guest
# can approach. In a fleet run each host has its own, ``<host>_host-baseline``.
BASELINE_ID = "host-baseline"


def limit_cases(case_ids: Sequence[str]) -> dict[str, str]:
    """Case id -> the host-baseline case that is its limit: ``host-baseline`` in a run from one
    host; ``<host>_host-baseline`` for ``<host>_<case>`` in a fleet run (same host only)."""
    limits = [c for c in case_ids if c == BASELINE_ID or c.endswith(f"_{BASELINE_ID}")]
    out: dict[str, str] = {}
    for case_id in case_ids:
        for limit in sorted(limits, key=len, reverse=True):  # the longest host prefix wins
            prefix = limit.removesuffix(BASELINE_ID)  # "" or "<host>_"
            if case_id.startswith(prefix):
                out[case_id] = limit
                break
    return out


DIRECTIONS = ("read", "write", "trim", "mixed")  # fio's I/O directions

Kind = Literal["fio", "iperf3"]


@dataclass(frozen=True)
class Metric:
    """A flat metric reports show and compare: its unit and which way is better."""

    name: str
    unit: str
    higher_is_better: bool
    label: str
    kind: Kind = "fio"


def _fio_metrics() -> list[Metric]:
    metrics = [
        Metric("total_iops", "IOPS", True, "IOPS, all directions"),
        Metric("total_bw_kib_s", "KiB/s", True, "bandwidth, all directions"),
        Metric("usr_cpu_pct", "%", False, "user CPU"),
        Metric("sys_cpu_pct", "%", False, "system CPU"),
    ]
    for d in DIRECTIONS:
        metrics += [
            Metric(f"{d}_iops", "IOPS", True, f"{d} IOPS"),
            Metric(f"{d}_bw_kib_s", "KiB/s", True, f"{d} bandwidth"),
            Metric(f"{d}_lat_mean_ns", "ns", False, f"{d} mean total latency (slat + clat)"),
            Metric(f"{d}_clat_mean_ns", "ns", False, f"{d} mean completion latency (clat)"),
            Metric(f"{d}_lat_stdev_ns", "ns", False, f"{d} latency stdev"),
            Metric(f"{d}_lat_max_ns", "ns", False, f"{d} max latency"),
            Metric(f"{d}_lat_p50_ns", "ns", False, f"{d} p50 completion latency"),
            Metric(f"{d}_lat_p90_ns", "ns", False, f"{d} p90 completion latency"),
            Metric(f"{d}_lat_p99_ns", "ns", False, f"{d} p99 completion latency"),
            Metric(f"{d}_lat_p99_9_ns", "ns", False, f"{d} p99.9 completion latency"),
        ]
    return metrics


IPERF_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("received_bits_per_s", "bit/s", True, "throughput at the receiver", "iperf3"),
        Metric("sent_bits_per_s", "bit/s", True, "throughput at the sender", "iperf3"),
        Metric("retransmits", "segments", False, "TCP retransmits", "iperf3"),
        Metric("lost_pct", "%", False, "UDP datagrams lost", "iperf3"),
        Metric("jitter_ms", "ms", False, "UDP jitter", "iperf3"),
        Metric("local_cpu_pct", "%", False, "client CPU", "iperf3"),
        Metric("remote_cpu_pct", "%", False, "server CPU", "iperf3"),
    )
}
"""Every name an iperf3 job reports."""

FIO_METRICS: dict[str, Metric] = {m.name: m for m in _fio_metrics()}
"""Every name a fio job reports (:func:`vmlab.fio.summary.summarize`)."""

METRICS: dict[str, Metric] = {**FIO_METRICS, **IPERF_METRICS}
"""Every metric name vmlab knows, fio's first."""

# The one metric that tells a network job's result from a storage job's.
NET_HEADLINE = "received_bits_per_s"


def job_kind(metrics: Mapping[str, float]) -> Kind:
    """Which tool measured these flat metrics."""
    return "iperf3" if NET_HEADLINE in metrics else "fio"


def headline(metrics: Mapping[str, float]) -> str:
    """One short human summary of a job's result: IOPS for fio, Gbit/s for iperf3."""
    if job_kind(metrics) == "iperf3":
        return f"{metrics[NET_HEADLINE] / 1e9:.2f} Gbit/s"
    return f"{metrics.get('read_iops', 0) + metrics.get('write_iops', 0):.0f} IOPS"


def stop_metric(metrics: Mapping[str, float]) -> str:
    """The metric a job's repetitions stop on (``repeat: {ci_pct}``): total IOPS for fio,
    received throughput for iperf3."""
    return NET_HEADLINE if job_kind(metrics) == "iperf3" else "total_iops"
