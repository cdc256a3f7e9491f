"""The fast path of :mod:`vmlab.fio.parse`: a decoded fio report -> plain dicts -> one strict
``FioOutput.model_validate``.

The checked path in :mod:`vmlab.fio.parse` wraps every JSON object and checks every field in
Python so that an error names the field (``jobs[0].read.iops is missing``); on 10,000 files
that costs several times what ``json.load`` does. Here the same normalisation is done with
plain dict access, and the types are left to pydantic's strict validation (in Rust): ``int``
fields take only ints, ``float`` fields ints and floats, never bools or strings.

Anything unusual - a missing key, a wrong type, a value the checked path would convert (``5.0``
for an integer, bin keys that collide after rounding), a report without a version - raises
:class:`Unusual`, and the caller parses the report again with the checked path, which gives
the same model or the precise error. So the result is the checked path's result, only faster:
``tests/unit/test_fio_fastparse.py`` holds the two paths equal on every corpus file and on
corrupted variants of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from vmlab.fio.model import FioOutput
from vmlab.metrics import DIRECTIONS

ALL_CLIENTS = "All clients"


class Unusual(Exception):
    """The report needs the checked path (its result, or its precise error)."""


FALLBACK_ERRORS = (Unusual, KeyError, TypeError, ValueError, AttributeError, ValidationError)
"""What sends a report to the checked path."""


def _number(value: Any) -> int | float:
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    raise Unusual


def _opt_int(data: Mapping[str, Any], key: str, default: int | None) -> int | None:
    if key not in data:
        return default
    value = data[key]
    if type(value) is not int:
        raise Unusual  # null, bool, 5.0, "5": the checked path decides
    return value


def _opt(data: Mapping[str, Any], key: str) -> Any:
    """The value, or None when missing; a present null is unusual (the checked path errs)."""
    if key not in data:
        return None
    value = data[key]
    if value is None:
        raise Unusual
    return value


def _options(data: Mapping[str, Any], key: str) -> dict[str, str]:
    if key not in data:
        return {}
    return {str(k): str(v) for k, v in data[key].items()}


def _bins(bins: Mapping[str, Any]) -> dict[int, int]:
    """fio 3.x json+ bins (keys: values in ns). fio 2.x index-keyed bins are unusual."""
    if "FIO_IO_U_PLAT_BITS" in bins:
        raise Unusual
    # Zero counts are dropped as the checked path drops them; a falsy non-int (False, 0.0)
    # is kept so that strict validation sends it to the checked path.
    counts = {int(k): c for k, c in bins.items() if c or type(c) is not int}
    if len(counts) != len(bins) and len(counts) != sum(
        1 for c in bins.values() if c or type(c) is not int
    ):
        raise Unusual  # keys that collide as integers ("12", "012"): the checked path sums
    return counts


def _latency(block: Mapping[str, Any], scale: float) -> dict[str, Any] | None:
    samples = _opt_int(block, "N", None)
    low, high, mean = _number(block["min"]), _number(block["max"]), _number(block["mean"])
    if samples == 0 or (samples is None and low == high == mean == 0):
        return None
    percentiles: dict[str, float] = {}
    table = _opt(block, "percentile")
    if table is not None:
        for key, value in table.items():
            if float(key) <= 0.0:
                continue  # fio 2.x pads its table with "0.00": 0
            percentiles[key] = _number(value) * scale
    bins = _opt(block, "bins")
    if bins is not None and scale != 1.0:
        raise Unusual  # fio 2.x json+ (microsecond keys, rounding): the checked path
    return {
        "min_ns": low * scale,
        "max_ns": high * scale,
        "mean_ns": mean * scale,
        "stdev_ns": _number(block["stddev"]) * scale,
        "samples": samples,
        "percentiles_ns": percentiles,
        # fio's own keys; a missing one is searched for by Latency's validator
        "p50_ns": percentiles.get("50.000000"),
        "p90_ns": percentiles.get("90.000000"),
        "p99_ns": percentiles.get("99.000000"),
        "p99_9_ns": percentiles.get("99.900000"),
        "bins_ns": _bins(bins) if bins is not None else None,
    }


def _latency_of(direction: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    if f"{kind}_ns" in direction:
        return _latency(direction[f"{kind}_ns"], 1.0)
    if kind in direction:
        return _latency(direction[kind], 1000.0)  # fio 2.x: microseconds
    return None


def _direction(block: Mapping[str, Any]) -> dict[str, Any] | None:
    total_ios = _number(block["total_ios"])
    io_kib = _number(block["io_kbytes"] if "io_kbytes" in block else block["io_bytes"])
    if total_ios == 0 and io_kib == 0:
        return None
    return {
        "io_kib": io_kib,
        "bw_kib_s": block["bw"],
        "iops": block["iops"],
        "runtime_ms": _number(block["runtime"]),
        "total_ios": total_ios,
        "short_ios": _opt_int(block, "short_ios", 0),
        "drop_ios": _opt_int(block, "drop_ios", 0),
        "clat": _latency_of(block, "clat"),
        "slat": _latency_of(block, "slat"),
        "lat": _latency_of(block, "lat"),
    }


def _job(job: Mapping[str, Any], global_options: Mapping[str, str], aggregate: bool) -> Any:
    out: dict[str, Any] = {
        name: _direction(job[name]) if name in job else None for name in DIRECTIONS
    }
    job_runtime = _opt(job, "job_runtime")
    if job_runtime is None:
        job_runtime = float(max((d["runtime_ms"] for d in out.values() if d), default=0.0))
    hostname = job.get("hostname")
    port = _opt_int(job, "port", None)
    out.update(
        name=job["jobname"],
        groupid=_opt_int(job, "groupid", 0),
        error=_opt_int(job, "error", 0),
        options={**global_options, **_options(job, "job options")},
        usr_cpu_pct=job["usr_cpu"],
        sys_cpu_pct=job["sys_cpu"],
        ctx=job["ctx"],
        majf=_opt_int(job, "majf", 0),
        minf=_opt_int(job, "minf", 0),
        runtime_ms=job_runtime,
        elapsed_s=_opt(job, "elapsed"),
        hostname=None if aggregate or not isinstance(hostname, str) else hostname,
        port=None if aggregate else port,
    )
    return out


def fast_report(doc: Mapping[str, Any]) -> FioOutput:
    """The report as the checked path would give it; raises one of FALLBACK_ERRORS when the
    checked path has to decide."""
    version = doc.get("fio version")
    if not isinstance(version, str):
        raise Unusual  # the checked path warns about it
    key = "jobs" if "jobs" in doc else "client_stats"
    global_options = _options(doc, "global options")
    jobs = []
    all_clients = None
    for entry in doc[key]:
        if key == "client_stats" and entry.get("jobname") == ALL_CLIENTS:
            all_clients = _job(entry, global_options, True)
        else:
            jobs.append(_job(entry, global_options, False))
    if not jobs:
        raise Unusual
    disk_util = doc.get("disk_util", [])
    return FioOutput.model_validate(
        {
            "fio_version": version,
            "timestamp": _opt_int(doc, "timestamp", None),
            "global_options": global_options,
            "jobs": jobs,
            "all_clients": all_clients,
            "disk_util": [d for d in disk_util if isinstance(d, dict)]
            if isinstance(disk_util, list)
            else [],
        },
        strict=True,
    )
