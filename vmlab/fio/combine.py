"""Merging jobs that ran side by side into one, as fio's ``group_reporting`` would, with
percentiles computed from json+ histogram bins as fio computes them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from vmlab.fio.model import Direction, JobResult, Latency
from vmlab.metrics import DIRECTIONS


def percentiles_from_bins(bins_ns: Mapping[int, int], percents: Sequence[str]) -> dict[str, float]:
    """Percentiles of a json+ histogram, computed as fio computes them.

    fio reports, for percentile p, the value of the first bin at which the running count reaches
    p/100 of all samples (``calc_clat_percentiles``). Fed one job's bins this gives back that
    job's own reported percentiles; fed the summed bins of several jobs it gives the percentiles
    fio's ``group_reporting`` would have printed. ``percents`` are keys like ``"99.000000"``.
    """
    ordered = sorted((value, count) for value, count in bins_ns.items() if count)
    total = sum(count for _, count in ordered)
    result: dict[str, float] = {}
    if not total:
        return result
    # One pass over the bins: the running count is an integer, so "reaches p/100 of all
    # samples" is "reaches the ceiling of it" (exact: the threshold is a fraction).
    wanted = sorted((math.ceil(Fraction(key) / 100 * total), float(key), key) for key in percents)
    bins = iter(ordered)
    running = 0
    value: int | None = None
    for threshold, _, key in wanted:
        while value is None or running < threshold:  # at least the first bin, as fio
            step = next(bins, None)
            if step is None:
                return result  # beyond the last bin
            value, count = step
            running += count
        result[key] = float(value)
    return result


def _combine_latency(parts: Sequence[tuple[Latency, int]]) -> Latency | None:
    """Merge latency blocks; ``parts`` pairs each block with its sample count."""
    if not parts:
        return None
    weights = [max(weight, 0) for _, weight in parts]
    if sum(weights) == 0:
        weights = [1] * len(parts)
    n = sum(weights)
    mean = sum(w * lat.mean_ns for (lat, _), w in zip(parts, weights, strict=True)) / n
    # Pooled sample variance, as fio sums its running statistics across threads.
    spread = sum(
        (w - 1) * lat.stdev_ns**2 + w * (lat.mean_ns - mean) ** 2
        for (lat, _), w in zip(parts, weights, strict=True)
    )
    stdev = math.sqrt(spread / (n - 1)) if n > 1 else 0.0
    lats = [lat for lat, _ in parts]
    samples = [lat.samples for lat in lats]
    bins = [lat.bins_ns for lat in lats]
    keys = sorted({k for lat in lats for k in lat.percentiles_ns}, key=float)
    merged_bins: dict[int, int] | None = None
    if all(b is not None for b in bins):
        merged_bins = {}
        for b in bins:
            for value, count in (b or {}).items():
                merged_bins[value] = merged_bins.get(value, 0) + count
        percentiles = percentiles_from_bins(merged_bins, keys)
    else:
        common = [k for k in keys if all(k in lat.percentiles_ns for lat in lats)]
        percentiles = {k: max(lat.percentiles_ns[k] for lat in lats) for k in common}
    return Latency(
        min_ns=min(lat.min_ns for lat in lats),
        max_ns=max(lat.max_ns for lat in lats),
        mean_ns=mean,
        stdev_ns=stdev,
        samples=None if any(s is None for s in samples) else sum(s or 0 for s in samples),
        percentiles_ns=percentiles,
        bins_ns=merged_bins,
    )


def _combine_direction(parts: Sequence[Direction]) -> Direction | None:
    if not parts:
        return None
    merged: dict[str, Latency | None] = {}
    for kind in ("clat", "slat", "lat"):
        blocks = []
        for d in parts:
            lat: Latency | None = getattr(d, kind)
            if lat is not None:
                blocks.append((lat, lat.samples if lat.samples is not None else d.total_ios))
        merged[kind] = _combine_latency(blocks)
    return Direction(
        io_kib=sum(d.io_kib for d in parts),
        bw_kib_s=sum(d.bw_kib_s for d in parts),
        iops=sum(d.iops for d in parts),
        runtime_ms=max(d.runtime_ms for d in parts),
        total_ios=sum(d.total_ios for d in parts),
        short_ios=sum(d.short_ios for d in parts),
        drop_ios=sum(d.drop_ios for d in parts),
        **merged,
    )


def _common(values: Sequence[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else None


def combine_jobs(jobs: Sequence[JobResult]) -> JobResult:
    """Merge jobs that ran side by side (``numjobs`` without ``group_reporting``, or one job on
    several fio servers) into one, as fio's ``group_reporting`` would.

    - IOPS, bandwidth, data, I/O counts, context switches and faults are summed.
    - Latency min/max are the extremes; mean and stdev are pooled, weighted by sample count
      (fio's ``N``, else the direction's ``total_ios``) - the same numbers fio prints.
    - Percentiles: when every job has json+ bins, the bins are summed and the percentiles
      computed from them exactly as fio does (``percentiles_from_bins``). Otherwise each
      percentile is the largest of the jobs' values: the merged percentile always lies between
      the smallest and the largest per-job value, so this is a (pessimistic) upper bound.
    - ``runtime_ms`` is the longest (wall clock of jobs running at once; fio's own group
      ``job_runtime`` sums them instead); CPU percentages are averaged, weighted by runtime.
    - name, groupid, hostname and port are kept when all jobs agree (name: else the distinct
      names joined by ``+``); options are those all jobs share; ``error`` is the first non-zero.

    Raises ValueError for an empty sequence.
    """
    if not jobs:
        raise ValueError("combine_jobs needs at least one job")
    directions = {
        name: _combine_direction([d for j in jobs if (d := getattr(j, name)) is not None])
        for name in DIRECTIONS
    }
    runtimes = [j.runtime_ms for j in jobs]
    weights = runtimes if sum(runtimes) > 0 else [1.0] * len(jobs)
    total_weight = sum(weights)
    names = list(dict.fromkeys(j.name for j in jobs))
    first = jobs[0]
    options = {k: v for k, v in first.options.items() if all(j.options.get(k) == v for j in jobs)}
    elapsed = [j.elapsed_s for j in jobs if j.elapsed_s is not None]
    return JobResult(
        name="+".join(names),
        groupid=first.groupid,
        error=next((j.error for j in jobs if j.error), 0),
        options=options,
        **directions,
        usr_cpu_pct=sum(w * j.usr_cpu_pct for j, w in zip(jobs, weights, strict=True))
        / total_weight,
        sys_cpu_pct=sum(w * j.sys_cpu_pct for j, w in zip(jobs, weights, strict=True))
        / total_weight,
        ctx=sum(j.ctx for j in jobs),
        majf=sum(j.majf for j in jobs),
        minf=sum(j.minf for j in jobs),
        runtime_ms=max(runtimes),
        elapsed_s=max(elapsed) if elapsed else None,
        hostname=_common([j.hostname for j in jobs]),
        port=_common([j.port for j in jobs]),
    )
