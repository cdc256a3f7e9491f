"""Typed parsing of fio's JSON output, from every fio 2.x and 3.x layout.

fio's JSON changed over the years; everything below is normalised into one set of models whose
field names carry their units (``_ns``, ``_kib``, ``_kib_s``, ``_ms``, ``_pct``):

- latency blocks are ``clat_ns``/``slat_ns``/``lat_ns`` in nanoseconds (fio >= 3.0) or
  ``clat``/``slat``/``lat`` in microseconds (fio 2.x), percentiles included; both become ns.
- ``bw`` is KiB/s in every version. fio 3 reports ``io_kbytes`` (KiB) and ``io_bytes`` (bytes);
  fio 2.x has only ``io_bytes``, and it holds KiB (fio 2.x shifted the byte count by 10 bits
  before printing it under that name).
- fio 2.x pads its percentile table with ``"0.00": 0`` entries; they are dropped.
- a direction (read, write, trim, or ``mixed`` with ``unified_rw_reporting``) that issued no I/O
  and moved no data is ``None``. A latency block with no samples (``N`` = 0, or all zero where
  fio prints no ``N``) is ``None``.
- json+ ``bins`` are kept (``bins_ns``: bin value in ns -> I/O count) so that jobs can be merged
  with exact percentiles; fio 2.x's index-keyed bins (with ``FIO_IO_U_PLAT_*`` keys) are turned
  into values with fio's own ``plat_idx_to_val``.
- client/server output has ``client_stats`` instead of ``jobs``; each entry carries ``hostname``
  and ``port``. fio adds an entry named ``All clients`` summing every host: it is not a job and
  would count the I/O twice, so it goes to ``FioOutput.all_clients``, never into ``jobs``.
- the text may hold anything around the JSON (fio's banner and warnings, stderr lines, the
  ``normal`` report of ``--output-format=normal,json``). The JSON report is found by decoding at
  each ``{`` that starts a line (then at any ``{``). ``--status-interval`` prints one report per
  interval: the last one, fio's final report, is used; if that one is cut off, it is an error.

Jobs whose ``error`` is not 0 are kept, with their error code. The models are in
:mod:`vmlab.fio.model`; merging jobs is :mod:`vmlab.fio.combine`, flat metrics
:mod:`vmlab.fio.summary`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vmlab.errors import ResultError
from vmlab.fio.fastparse import FALLBACK_ERRORS, fast_report
from vmlab.fio.model import Direction, FioOutput, JobResult, Latency
from vmlab.metrics import DIRECTIONS

log = logging.getLogger(__name__)

ALL_CLIENTS = "All clients"
"""Job name fio's client gives to its sum over every server (see module docstring)."""


# --------------------------------------------------------------------------------------------
# Finding the JSON report in the text

_HINT_NO_JSON = (
    "run fio with --output-format=json (or json+) and keep its whole stdout; "
    "the text must contain fio's JSON report"
)
_HINT_TRUNCATED = (
    "the report looks cut off or corrupt: check that fio finished (exit status, SSH timeout, "
    "full disk) and that all of its stdout was saved"
)
_HINT_LAYOUT = (
    "this fio JSON layout is not understood; keep the raw output and report it "
    "together with the fio version"
)

# Where a JSON object may start: "{" then a key or "}" (cheap filter before decoding).
_LINE_START_OBJECT = re.compile(r'^[ \t]*\{(?=\s*["}])', re.MULTILINE)
_ANY_OBJECT = re.compile(r'\{(?=\s*["}])')
_DECODER = json.JSONDecoder()


class _Context:
    """Where the text came from, for error messages."""

    def __init__(self, source: str | None, path: Path | None) -> None:
        self.path = path
        self.label = source if source is not None else (str(path) if path else "fio output")

    def error(self, what: str, hint: str) -> ResultError:
        message = what if self.path is not None else f"{self.label}: {what}"
        return ResultError(message, path=self.path, hint=hint)


def _is_fio_report(obj: Any) -> bool:
    return isinstance(obj, dict) and any(
        key in obj for key in ("fio version", "jobs", "client_stats")
    )


def _decode_candidates(
    text: str, starts: Iterator[int]
) -> tuple[list[tuple[int, dict[str, Any]]], int, tuple[int, str] | None]:
    """Decode a JSON object at each start.

    Returns the fio reports with their offsets, how many other objects decoded, and the offset
    and decoder message of the last fio report that did not decode (cut off or corrupt).
    """
    decoder = json.JSONDecoder()
    reports: list[tuple[int, dict[str, Any]]] = []
    others = 0
    broken: tuple[int, str] | None = None
    skip_until = 0
    for start in starts:
        if start < skip_until:
            continue  # inside an object decoded already
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if '"fio version"' in text[start : start + 200]:
                broken = (start, str(exc))
            continue
        skip_until = end
        if _is_fio_report(obj):
            reports.append((start, obj))
        else:
            others += 1
    return reports, others, broken


def _single_report(text: str) -> dict[str, Any] | None:
    """The common case, cheaply: the first object that starts a line is a fio report and
    nothing but whitespace follows it. The full search would find the same report (every
    later start lies inside it); anything else is left to the full search."""
    first = _LINE_START_OBJECT.search(text)
    if first is None:
        return None
    try:
        obj, end = _DECODER.raw_decode(text, first.end() - 1)
    except json.JSONDecodeError:
        return None
    if not _is_fio_report(obj) or text[end:].strip():
        return None
    return obj  # type: ignore[no-any-return]


def _find_report(text: str, ctx: _Context) -> dict[str, Any]:
    single = _single_report(text)
    if single is not None:
        return single
    line_starts = (m.end() - 1 for m in _LINE_START_OBJECT.finditer(text))
    reports, others, broken = _decode_candidates(text, line_starts)
    if not reports:  # a report glued to other text on its first line
        anywhere = (m.start() for m in _ANY_OBJECT.finditer(text))
        reports, others, broken_anywhere = _decode_candidates(text, anywhere)
        broken = broken or broken_anywhere
    # A broken report after the good ones is fio's final report cut off: the earlier ones are
    # only --status-interval snapshots, not results.
    if broken is not None and (not reports or broken[0] > reports[-1][0]):
        raise ctx.error(f"fio JSON report is incomplete or invalid: {broken[1]}", _HINT_TRUNCATED)
    if reports:
        if len(reports) > 1:
            log.info(
                "%s: %d fio reports in the output (--status-interval?); using the last one",
                ctx.label,
                len(reports),
            )
        return reports[-1][1]
    if others:
        raise ctx.error(
            "JSON found, but no fio report: no object has 'fio version', 'jobs' or 'client_stats'",
            _HINT_NO_JSON,
        )
    raise ctx.error(f"no JSON object found in {len(text)} characters of output", _HINT_NO_JSON)


# --------------------------------------------------------------------------------------------
# Typed access to the decoded JSON, with the field path in every error


class _Obj:
    """A JSON object, where it sits in the report (``jobs[0].read``), and its context."""

    def __init__(self, data: Mapping[str, Any], where: str, ctx: _Context) -> None:
        self.data = data
        self.where = where
        self.ctx = ctx

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, problem: str) -> ResultError:
        return self.ctx.error(f"fio JSON field {self._path(key)} {problem}", _HINT_LAYOUT)

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise self._bad(key, "is missing")
        return self.data[key]

    def num(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, f"is not a number: {value!r}")
        return float(value)

    def integer(self, key: str) -> int:
        value = self.num(key)
        if not value.is_integer():
            raise self._bad(key, f"is not an integer: {value!r}")
        return int(value)

    def opt_num(self, key: str) -> float | None:
        return self.num(key) if key in self.data else None

    def opt_int(self, key: str, default: int | None = None) -> int | None:
        return self.integer(key) if key in self.data else default

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, f"is not a string: {value!r}")
        return value

    def obj(self, key: str) -> _Obj:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._bad(key, f"is not an object: {type(value).__name__}")
        return _Obj(value, self._path(key), self.ctx)

    def opt_obj(self, key: str) -> _Obj | None:
        return self.obj(key) if key in self.data else None

    def objects(self, key: str) -> list[_Obj]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._bad(key, f"is not a list: {type(value).__name__}")
        found = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._bad(f"{key}[{i}]", f"is not an object: {type(item).__name__}")
            found.append(_Obj(item, f"{self._path(key)}[{i}]", self.ctx))
        return found

    def options(self, key: str) -> dict[str, str]:
        """A map of fio options; values printed as strings by fio, kept as strings."""
        if key not in self.data:
            return {}
        return {str(k): str(v) for k, v in self.obj(key).data.items()}


# --------------------------------------------------------------------------------------------
# Report -> models


def plat_idx_to_val(idx: int, plat_bits: int = 6, plat_val: int = 64) -> int:
    """fio's ``plat_idx_to_val``: the value a histogram bucket index stands for."""
    if idx < (plat_val << 1):
        return idx
    error_bits = (idx >> plat_bits) - 1
    base = 1 << (error_bits + plat_bits)
    k = idx % plat_val
    return base + (((2 * k + 1) << error_bits) >> 1)  # base + (k + 0.5) * 2**error_bits


def _bins(bins: _Obj, scale: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    if "FIO_IO_U_PLAT_BITS" in bins:  # fio 2.x json+: keys are bucket indexes
        plat_bits = bins.integer("FIO_IO_U_PLAT_BITS")
        plat_val = bins.integer("FIO_IO_U_PLAT_VAL")
        for key in bins.data:
            if key.startswith("FIO_IO_U_PLAT_"):
                continue
            count = bins.integer(key)
            if count:
                value = round(plat_idx_to_val(int(key), plat_bits, plat_val) * scale)
                counts[value] = counts.get(value, 0) + count
        return counts
    for key in bins.data:  # fio 3.x json+: keys are bucket values
        try:
            value = round(float(key) * scale)
        except ValueError:
            raise bins._bad(key, "is not a latency bin value") from None
        count = bins.integer(key)
        if count:
            counts[value] = counts.get(value, 0) + count
    return counts


def _latency(block: _Obj, scale: float) -> Latency | None:
    samples = block.opt_int("N")
    low, high, mean = block.num("min"), block.num("max"), block.num("mean")
    if samples == 0 or (samples is None and low == high == mean == 0):
        return None
    percentiles: dict[str, float] = {}
    table = block.opt_obj("percentile")
    if table is not None:
        for key in table.data:
            try:
                if float(key) <= 0.0:
                    continue  # fio 2.x pads its table with "0.00": 0
            except ValueError:
                raise table._bad(key, "is not a percentile") from None
            percentiles[key] = table.num(key) * scale
    bins = block.opt_obj("bins")
    return Latency(
        min_ns=low * scale,
        max_ns=high * scale,
        mean_ns=mean * scale,
        stdev_ns=block.num("stddev") * scale,
        samples=samples,
        percentiles_ns=percentiles,
        bins_ns=_bins(bins, scale) if bins is not None else None,
    )


def _latency_of(direction: _Obj, kind: str) -> Latency | None:
    if f"{kind}_ns" in direction:
        return _latency(direction.obj(f"{kind}_ns"), 1.0)
    if kind in direction:
        return _latency(direction.obj(kind), 1000.0)  # fio 2.x: microseconds
    return None


def _direction(block: _Obj) -> Direction | None:
    total_ios = block.integer("total_ios")
    # fio 2.x printed KiB under the name io_bytes; fio 3 prints both, io_kbytes in KiB.
    io_kib = block.num("io_kbytes") if "io_kbytes" in block else block.num("io_bytes")
    if total_ios == 0 and io_kib == 0:
        return None
    return Direction(
        io_kib=io_kib,
        bw_kib_s=block.num("bw"),
        iops=block.num("iops"),
        runtime_ms=block.num("runtime"),
        total_ios=total_ios,
        short_ios=block.opt_int("short_ios", 0) or 0,
        drop_ios=block.opt_int("drop_ios", 0) or 0,
        clat=_latency_of(block, "clat"),
        slat=_latency_of(block, "slat"),
        lat=_latency_of(block, "lat"),
    )


def _job(job: _Obj, global_options: Mapping[str, str], *, aggregate: bool = False) -> JobResult:
    directions = {}
    for name in DIRECTIONS:
        block = job.opt_obj(name)
        directions[name] = _direction(block) if block is not None else None
    job_runtime = job.opt_num("job_runtime")
    if job_runtime is None:
        job_runtime = max((d.runtime_ms for d in directions.values() if d), default=0.0)
    hostname = job.data.get("hostname")
    return JobResult(
        name=job.text("jobname"),
        groupid=job.opt_int("groupid", 0) or 0,
        error=job.opt_int("error", 0) or 0,
        options={**global_options, **job.options("job options")},
        **directions,
        usr_cpu_pct=job.num("usr_cpu"),
        sys_cpu_pct=job.num("sys_cpu"),
        ctx=job.integer("ctx"),
        majf=job.opt_int("majf", 0) or 0,
        minf=job.opt_int("minf", 0) or 0,
        runtime_ms=job_runtime,
        elapsed_s=job.opt_num("elapsed"),
        # fio stamps its aggregate with the last server's address: meaningless there.
        hostname=None if aggregate or not isinstance(hostname, str) else hostname,
        port=None if aggregate else job.opt_int("port"),
    )


def _report(doc: _Obj) -> FioOutput:
    version = doc.data.get("fio version")
    if not isinstance(version, str):
        log.warning("%s: fio report without a 'fio version'", doc.ctx.label)
        version = "unknown"
    if "jobs" in doc:
        key = "jobs"
    elif "client_stats" in doc:
        key = "client_stats"
    else:
        raise doc.ctx.error(f"{version} report has neither 'jobs' nor 'client_stats'", _HINT_LAYOUT)
    global_options = doc.options("global options")
    jobs: list[JobResult] = []
    all_clients = None
    for entry in doc.objects(key):
        if key == "client_stats" and entry.data.get("jobname") == ALL_CLIENTS:
            all_clients = _job(entry, global_options, aggregate=True)
        else:
            jobs.append(_job(entry, global_options))
    if not jobs:
        raise doc.ctx.error(
            f"{version} report lists no jobs",
            "fio stopped before any job ran: read the error lines of its output",
        )
    disk_util = doc.data.get("disk_util", [])
    return FioOutput(
        fio_version=version,
        timestamp=doc.opt_int("timestamp"),
        global_options=global_options,
        jobs=jobs,
        all_clients=all_clients,
        disk_util=[d for d in disk_util if isinstance(d, dict)]
        if isinstance(disk_util, list)
        else [],
    )


def _parse(text: str, ctx: _Context) -> FioOutput:
    doc = _find_report(text, ctx)
    try:
        return fast_report(doc)
    except FALLBACK_ERRORS:
        return _report(_Obj(doc, "", ctx))  # the same model, or the error naming the field


def parse_fio_output(text: str, *, source: str | None = None) -> FioOutput:
    """Parse fio's output (JSON report, maybe with text around it) into a typed report.

    ``source`` names the output in error messages (a file, a case id, a host).
    Raises ResultError when there is no report, it is cut off, or a required field is missing.
    """
    return _parse(text, _Context(source, None))


def parse_fio_file(path: Path) -> FioOutput:
    """Parse a saved fio output file; errors carry the path."""
    ctx = _Context(None, path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")  # as the importer reads
    except OSError as exc:
        raise ResultError(
            f"cannot read fio output: {exc.strerror or exc}",
            path=path,
            hint="check the path and its permissions",
        ) from exc
    return _parse(text, ctx)
