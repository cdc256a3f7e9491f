"""The bench's closing table: one row per configuration and job, ratio to the first one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vmlab.metrics import limit_cases


@dataclass(frozen=True)
class Row:
    case_id: str
    job: str
    iops: float
    lat_mean_us: float | None
    lat_p99_us: float | None
    ratio: float | None  # IOPS relative to the first configuration, same job
    of_host: float | None = None  # IOPS as a fraction of the host baseline, same job
    iops_ci: float | None = None  # half-width of the IOPS confidence interval (2+ repetitions)
    noisy: bool = False  # IOPS or latency CV above the report's noisy threshold


def _spread(samples: Sequence[float | None]) -> tuple[float | None, bool]:
    """The CI half-width and noisy flag of one metric's repetitions, as the report computes them."""
    from vmlab.report.stats import describe

    xs = [x for x in samples if x is not None]
    if len(xs) < 2:
        return None, False
    cell = describe(xs)
    return cell.half_width, cell.noisy


def _get(metrics: Mapping[str, float], key: str) -> float:
    return float(metrics.get(key, 0.0) or 0.0)


def _clat_mean(metrics: Mapping[str, float], direction: str) -> float | None:
    found = metrics.get(f"{direction}_clat_mean_ns")
    return found if found is not None else metrics.get(f"{direction}_lat_mean_ns")


def row_values(metrics: Mapping[str, float]) -> tuple[float, float | None, float | None]:
    """Total IOPS; completion-latency mean over all I/O (weighted by IOPS); the worse p99
    direction. Both latencies are completion latency (clat), so the mean and the p99 agree;
    a summary stored before vmlab kept ``clat_mean`` gives its total-latency mean instead."""
    r_iops, w_iops = _get(metrics, "read_iops"), _get(metrics, "write_iops")
    iops = r_iops + w_iops
    means = [(r_iops, _clat_mean(metrics, "read")), (w_iops, _clat_mean(metrics, "write"))]
    weighted = [(w, m) for w, m in means if m is not None and w > 0]
    total = sum(w for w, _ in weighted)
    mean_us = sum(w * m for w, m in weighted) / total / 1000 if total else None
    p99s = [
        p
        for p in (metrics.get("read_lat_p99_ns"), metrics.get("write_lat_p99_ns"))
        if p is not None
    ]
    p99_us = max(p99s) / 1000 if p99s else None
    return iops, mean_us, p99_us


def _of_host(
    row: Row, limits: Mapping[str, str], host: Mapping[tuple[str, str], float]
) -> float | None:
    limit = limits.get(row.case_id)
    if limit is None or limit == row.case_id or not host.get((limit, row.job)):
        return None
    return row.iops / host[(limit, row.job)]


def build_rows(results: Sequence[tuple[str, str, Mapping[str, float]]]) -> list[Row]:
    """results: (case id, job name, metrics) in run order; repetitions are averaged.

    The host baseline, when present, is the limit: it gets no ratio of its own and every
    guest row gets its IOPS as a fraction of it (in a fleet run, of its own host's baseline).
    """
    limits = limit_cases(list(dict.fromkeys(case_id for case_id, _, _ in results)))
    grouped: dict[tuple[str, str], list[Mapping[str, float]]] = {}
    for case_id, job, metrics in results:
        grouped.setdefault((case_id, job), []).append(metrics)
    first_case: dict[str, float] = {}
    host: dict[tuple[str, str], float] = {}  # (limit case, job) -> IOPS
    rows: list[Row] = []
    for (case_id, job), samples in grouped.items():
        values = [row_values(m) for m in samples]
        iops = sum(v[0] for v in values) / len(values)
        means = [v[1] for v in values if v[1] is not None]
        p99s = [v[2] for v in values if v[2] is not None]
        mean = sum(means) / len(means) if means else None
        p99 = sum(p99s) / len(p99s) if p99s else None
        iops_ci, noisy = _spread([v[0] for v in values])
        noisy = noisy or _spread([v[1] for v in values])[1] or _spread([v[2] for v in values])[1]
        if limits.get(case_id) == case_id:
            host[(case_id, job)] = iops
            rows.append(Row(case_id, job, iops, mean, p99, None, None, iops_ci, noisy))
            continue
        base = first_case.setdefault(job, iops)
        ratio = iops / base if base else None
        rows.append(Row(case_id, job, iops, mean, p99, ratio, None, iops_ci, noisy))
    order = list(grouped)
    rows = [replace(r, of_host=_of_host(r, limits, host)) for r in rows]
    return sorted(rows, key=lambda r: (r.job, order.index((r.case_id, r.job))))
