"""The typed results of one fio report: its jobs, their directions, latency distributions.

Field names carry their units (``_ns``, ``_kib``, ``_kib_s``, ``_ms``, ``_pct``);
:mod:`vmlab.fio.parse` fills them from every fio 2.x and 3.x JSON layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vmlab.metrics import DIRECTIONS

_MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid")

# Named percentiles exposed as fields, and the fio percentile each one reads.
_NAMED_PERCENTILES = {"p50_ns": 50.0, "p90_ns": 90.0, "p99_ns": 99.0, "p99_9_ns": 99.9}


def _find_percentile(percentiles: Mapping[str, Any], percent: float) -> Any:
    exact = percentiles.get(f"{percent:.6f}")  # how fio prints its keys: "99.900000"
    if exact is not None:
        return exact
    for key, value in percentiles.items():
        try:
            if math.isclose(float(key), percent, abs_tol=1e-6):
                return value
        except (TypeError, ValueError):
            continue
    return None


class Latency(BaseModel):
    """One latency distribution of one direction, in nanoseconds."""

    model_config = _MODEL_CONFIG

    min_ns: float
    max_ns: float
    mean_ns: float
    stdev_ns: float
    samples: int | None = None
    """fio's ``N``; ``None`` for fio versions that do not print it."""
    percentiles_ns: dict[str, float] = Field(default_factory=dict)
    """Keys as fio prints them (``"99.900000"``), values in ns; empty if fio printed none."""
    p50_ns: float | None = None
    p90_ns: float | None = None
    p99_ns: float | None = None
    p99_9_ns: float | None = None
    bins_ns: dict[int, int] | None = None
    """json+ histogram: bin value in ns -> I/O count; ``None`` without json+."""

    @model_validator(mode="before")
    @classmethod
    def _named_percentiles(cls, data: Any) -> Any:
        """Fill ``p50_ns``... from ``percentiles_ns`` when they are not given."""
        table = data.get("percentiles_ns") if isinstance(data, dict) else None
        # An empty table (no percentiles: most slat and lat blocks) fills nothing.
        if table and isinstance(table, Mapping):
            missing = [f for f in _NAMED_PERCENTILES if data.get(f) is None]
            if missing:
                data = dict(data)
                for field in missing:
                    data[field] = _find_percentile(table, _NAMED_PERCENTILES[field])
        return data


class Direction(BaseModel):
    """Read, write, trim (or ``mixed``) results of one job."""

    model_config = _MODEL_CONFIG

    io_kib: float
    bw_kib_s: float
    iops: float
    runtime_ms: float
    total_ios: int
    short_ios: int = 0
    drop_ios: int = 0
    clat: Latency | None = None
    """Completion latency; its percentiles are fio's default ones."""
    slat: Latency | None = None
    """Submission latency."""
    lat: Latency | None = None
    """Total latency; has percentiles only with fio's ``lat_percentiles=1``."""


class JobResult(BaseModel):
    """One job (or one group with ``group_reporting``, or one job on one fio server)."""

    model_config = _MODEL_CONFIG

    name: str
    groupid: int = 0
    error: int = 0
    options: dict[str, str] = Field(default_factory=dict)
    """The report's global options overlaid with the job's own."""
    read: Direction | None = None
    write: Direction | None = None
    trim: Direction | None = None
    mixed: Direction | None = None
    """Only with fio's ``unified_rw_reporting``: reads, writes and trims as one."""
    usr_cpu_pct: float = 0.0
    sys_cpu_pct: float = 0.0
    ctx: int = 0
    majf: int = 0
    minf: int = 0
    runtime_ms: float = 0.0
    """fio's ``job_runtime``; where fio does not print it, the longest direction runtime."""
    elapsed_s: float | None = None
    hostname: str | None = None
    """The fio server that ran the job (client/server output only)."""
    port: int | None = None

    def directions(self) -> dict[str, Direction]:
        """The directions that did I/O, by name."""
        found = {name: getattr(self, name) for name in DIRECTIONS}
        return {name: d for name, d in found.items() if d is not None}


class FioOutput(BaseModel):
    """One fio report."""

    model_config = _MODEL_CONFIG

    fio_version: str
    timestamp: int | None = None
    global_options: dict[str, str] = Field(default_factory=dict)
    jobs: list[JobResult]
    all_clients: JobResult | None = None
    """fio's ``All clients`` sum in client/server output with several servers; not a job."""
    disk_util: list[dict[str, Any]] = Field(default_factory=list)
