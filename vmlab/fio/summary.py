"""Flat metrics of one job for reports (named in :mod:`vmlab.metrics`)."""

from __future__ import annotations

from vmlab.fio.model import _NAMED_PERCENTILES, JobResult


def summarize(job: JobResult) -> dict[str, float]:
    """Flat metrics of one job, named as in :data:`vmlab.metrics.FIO_METRICS`.

    Per direction that did I/O: IOPS, bandwidth, mean/stdev/max latency from the total latency
    (``lat``) when fio reported it, else the completion latency (``clat``); the mean completion
    latency apart (``clat_mean``), the one that agrees with the percentiles; p50/p90/p99/p99.9
    from the completion-latency percentiles (fio's default), else from ``lat`` percentiles.
    A direction without I/O, or a percentile fio did not report, gives no key at all.
    """
    out: dict[str, float] = {
        "usr_cpu_pct": job.usr_cpu_pct,
        "sys_cpu_pct": job.sys_cpu_pct,
    }
    directions = job.directions()
    out["total_iops"] = sum(d.iops for d in directions.values())
    out["total_bw_kib_s"] = sum(d.bw_kib_s for d in directions.values())
    for name, d in directions.items():
        out[f"{name}_iops"] = d.iops
        out[f"{name}_bw_kib_s"] = d.bw_kib_s
        whole = d.lat or d.clat
        if whole is not None:
            out[f"{name}_lat_mean_ns"] = whole.mean_ns
            out[f"{name}_lat_stdev_ns"] = whole.stdev_ns
            out[f"{name}_lat_max_ns"] = whole.max_ns
        if d.clat is not None:
            out[f"{name}_clat_mean_ns"] = d.clat.mean_ns
        ranked = d.clat if d.clat is not None and d.clat.percentiles_ns else d.lat
        if ranked is None:
            continue
        for field in _NAMED_PERCENTILES:
            value: float | None = getattr(ranked, field)
            if value is not None:
                out[f"{name}_lat_{field}"] = value
    return out
