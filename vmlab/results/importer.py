"""Import fio JSON that vmlab did not produce into native-looking run directories.

``vmlab import DIR`` walks a tree. Every folder holding fio output becomes one run with one case
named after the folder. Each file is parsed (any fio 2.x/3.x layout, text around the JSON,
client/server output) and split into *units*: one per fio job name and fio server, the clones of
``numjobs`` without ``group_reporting`` merged (``combine_jobs``), plus fio's ``All clients`` sum
when several servers ran. Parameters are inferred from each unit's own job options (rw, rwmixread,
bs, iodepth, numjobs, ioengine, direct, size, unified_rw_reporting) and its server (hostname):

- parameters equal across the folder become the case's parameters;
- the ones that vary name the job: ``randread-qd16-nj4`` (rw first, then ``mix``, ``bs``, ``qd``,
  ``nj``, engine, ``direct``/``buffered``, ``size``, host);
- units of different files with the same parameters are repetitions of one job (r1, r2... in file
  name order); units of one file that would collide keep their fio job name as a parameter.

Each case is written packed (:mod:`vmlab.results.rundir.packed`): ``raw.tar`` holds every raw
file byte-for-byte as ``jobs/<job>/r<N>/fio.json``, written first; ``summaries.json`` maps each
``<job>/r<N>`` to its flat metrics and its ``source`` (original path, fio job, server). The
parsed unit, which a bench's summary.json also holds, is read again from the raw file when a
report wants it (:func:`measured_fio`): it made summaries.json five times larger, and writing
it was a tenth of an import. Two files per case, not a folder and two files per
repetition (on this disk creating a file cost more than parsing one), and one index
transaction per run. Folders are parsed and written side by side, by one forked process per CPU
(``--workers``); this process indexes each run as it arrives, in folder order, so an
interrupted import keeps every run indexed so far.
The run's ``spec.json``, ``status.json`` and ``import.json`` say ``"source": "import"``.

Only ``*.json``, ``*.txt`` and ``*.out`` files are candidates (fio's bandwidth/latency ``.log``
files and the like are not reports). A candidate that cannot be used is listed with the reason
(not JSON, no fio report, cut off, no jobs, fio error); nothing stops at the first. Directories
that are vmlab run directories themselves are skipped.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from vmlab import __version__
from vmlab.errors import ResultError
from vmlab.fio.combine import combine_jobs
from vmlab.fio.model import FioOutput, JobResult
from vmlab.fio.parse import parse_fio_output
from vmlab.fio.summary import summarize
from vmlab.results.importparams import PARAM_KEYS, infer_params, job_name, natural_key, slug
from vmlab.results.index import default_index_path, index_record, open_index
from vmlab.results.rundir import (
    CaseRecord,
    RunDir,
    RunRecord,
    Sample,
    is_run_dir,
    now_iso,
    run_stamp,
)
from vmlab.results.rundir.packed import PackedRepetition, write_packed

log = logging.getLogger(__name__)

CANDIDATE_SUFFIXES = (".json", ".txt", ".out")
ALL_CLIENTS_HOST = "all-clients"


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str


@dataclass(frozen=True)
class Unit:
    """One measured fio job from one file."""

    path: Path
    raw: bytes
    fio: FioOutput
    job: JobResult
    params: Mapping[str, str]


@dataclass(frozen=True)
class ImportedJob:
    name: str
    params: Mapping[str, str]
    repetitions: tuple[Unit, ...]


@dataclass(frozen=True)
class ImportedCase:
    case_id: str
    params: Mapping[str, str]
    folder: Path
    jobs: tuple[ImportedJob, ...]


@dataclass(frozen=True)
class ImportedRun:
    run_id: str
    path: Path
    folder: Path
    jobs: int
    files: int


@dataclass(frozen=True)
class ImportResult:
    runs: tuple[ImportedRun, ...]
    rejected: tuple[Rejected, ...]
    ignored: int
    """Files that are not candidates (not .json/.txt/.out), not counted as rejected."""


# --------------------------------------------------------------------------------------------
# Files -> units


def _fio_error(code: int) -> str:
    name = errno.errorcode.get(code)
    return f"{code} ({name})" if name else str(code)


def read_units(path: Path, raw: bytes | None = None) -> tuple[list[Unit], list[Rejected]]:
    """Parse one file into units. Raises ResultError when the file holds no usable report;
    jobs that fio reports as failed are returned as rejections, the others as units."""
    data = path.read_bytes() if raw is None else raw
    label = str(path)
    try:
        report = parse_fio_output(data.decode("utf-8", errors="replace"), source=label)
    except ResultError as exc:
        raise ResultError(exc.message.removeprefix(f"{label}: "), path=path, hint=exc.hint) from exc
    groups: dict[tuple[str, str | None, int | None], list[JobResult]] = {}
    for job in report.jobs:
        groups.setdefault(_unit_key(job), []).append(job)
    jobs = [combine_jobs(g) if len(g) > 1 else g[0] for g in groups.values()]
    if report.all_clients is not None:
        # fio prints no options on its sum: it ran what every client ran.
        shared = combine_jobs(report.jobs).options
        jobs.append(
            report.all_clients.model_copy(
                update={"hostname": ALL_CLIENTS_HOST, "port": None, "options": shared}
            )
        )
    units, rejected = [], []
    for job in jobs:
        if job.error:
            rejected.append(
                Rejected(path, f"fio job {job.name!r} failed with error {_fio_error(job.error)}")
            )
            continue
        if not job.directions():
            rejected.append(Rejected(path, f"fio job {job.name!r} did no I/O"))
            continue
        units.append(Unit(path, data, report, job, infer_params(job)))
    # Jobs of one file that ran side by side with identical options: keep them apart.
    seen: dict[tuple[tuple[str, str], ...], int] = {}
    for unit in units:
        key = tuple(sorted(unit.params.items()))
        seen[key] = seen.get(key, 0) + 1
    units = [
        u
        if seen[tuple(sorted(u.params.items()))] == 1
        else Unit(u.path, u.raw, u.fio, u.job, {**u.params, "fio_job": u.job.name})
        for u in units
    ]
    return units, rejected


def group_folder(units: Sequence[Unit], case_id: str, folder: Path) -> ImportedCase:
    """Units of one folder -> one case: constant parameters on the case, the varying ones
    naming the jobs, identical parameter sets as repetitions."""
    if not units:
        raise ValueError("a case needs at least one unit")
    keys = [k for k in PARAM_KEYS if any(k in u.params for u in units)]
    varying = [k for k in keys if len({u.params.get(k) for u in units}) > 1]
    constant = {k: units[0].params[k] for k in keys if k not in varying and k in units[0].params}
    groups: dict[tuple[tuple[str, str], ...], list[Unit]] = {}
    for unit in sorted(units, key=lambda u: natural_key(u.path.name)):
        groups.setdefault(tuple(sorted(unit.params.items())), []).append(unit)
    jobs: list[ImportedJob] = []
    names: set[str] = set()
    for members in groups.values():
        name = base = job_name(members[0].params, varying)
        counter = 1
        while name in names:
            counter += 1
            name = f"{base}-{counter}"
        names.add(name)
        jobs.append(ImportedJob(name, dict(members[0].params), tuple(members)))
    jobs.sort(key=lambda j: natural_key(j.name))
    return ImportedCase(slug(case_id) or "import", constant, folder, tuple(jobs))


def _unit_key(job: JobResult) -> tuple[str, str | None, int | None]:
    return job.name, job.hostname, job.port


def measured_fio(raw: bytes, source: Mapping[str, object]) -> FioOutput:
    """The fio report of one imported repetition, read again from its raw file: the unit
    ``source`` names (its summary's: fio job, server), alone, as :func:`read_units` made it.
    Raises ResultError when the file no longer gives that unit."""
    path = Path(str(source.get("path", "")))
    key = (source.get("fio_job"), source.get("hostname"), source.get("port"))
    units, _ = read_units(path, raw)
    for unit in units:
        if _unit_key(unit.job) == key:
            return unit.fio.model_copy(update={"jobs": [unit.job], "all_clients": None})
    raise ResultError(f"its raw file has no fio job {key[0]!r} on server {key[1]!r}", path=path)


# --------------------------------------------------------------------------------------------
# Units -> a run directory


def _iso(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def write_import(
    results_root: Path,
    cases: Sequence[ImportedCase],
    *,
    name: str,
    source: Path,
    rejected: Sequence[Rejected] = (),
) -> RunDir:
    """Write one run directory holding ``cases``, laid out as the bench lays out its runs."""
    return write_import_record(results_root, cases, name=name, source=source, rejected=rejected)[0]


def write_import_record(
    results_root: Path,
    cases: Sequence[ImportedCase],
    *,
    name: str,
    source: Path,
    rejected: Sequence[Rejected] = (),
) -> tuple[RunDir, RunRecord]:
    """:func:`write_import`, returning also the run's record for the index: what
    ``scan_run`` would read back from the directory, without reading it back."""
    run = RunDir.create(results_root, name)
    units = [u for c in cases for j in c.jobs for u in j.repetitions]
    stamps = [u.fio.timestamp for u in units if u.fio.timestamp is not None]
    started, finished = _iso(min(stamps, default=None)), _iso(max(stamps, default=None))
    jobs: dict[str, Mapping[str, str]] = {}
    for case in cases:
        for job in case.jobs:
            jobs.setdefault(job.name, job.params)
    spec_name, description = slug(name) or "import", f"imported from {source}"
    run.write_json(
        "spec.json",
        {
            "name": spec_name,
            "description": description,
            "source": "import",
            "runtime_s": None,
            "jobs": [{"name": n, **p} for n, p in jobs.items()],
            "variants": [
                {"params": dict(c.params), "launcher": "import", "folder": str(c.folder)}
                for c in cases
            ],
        },
    )
    run.write_json("vmlab.json", {"version": __version__})
    raw = {u.path: u.raw for u in units}
    files = sorted(raw, key=lambda p: natural_key(str(p)))
    run.write_json(
        "import.json",
        {
            "source": str(source),
            "imported": now_iso(),
            "files": [
                {"path": str(p), "sha256": hashlib.sha256(raw[p]).hexdigest()} for p in files
            ],
            "rejected": [{"path": str(r.path), "reason": r.reason} for r in rejected],
        },
    )
    run.set_status("running", source="import", started=started, cases=[c.case_id for c in cases])
    case_records: list[CaseRecord] = []
    samples: list[Sample] = []
    for case in cases:
        case_dir = run.case(case.case_id)
        case_dir.write_json(
            "case.json",
            {
                "id": case.case_id,
                "params": dict(case.params),
                "variant": {"source": "import", "folder": str(case.folder)},
            },
        )
        packed: list[PackedRepetition] = []
        measured_here: list[Sample] = []
        jobs_root = case_dir.path / "jobs"
        for job in case.jobs:
            job_root = jobs_root / job.name
            for repetition, unit in enumerate(job.repetitions, start=1):
                metrics = summarize(unit.job)
                summary = {  # the parsed unit is not kept: measured_fio reads it from the raw
                    "metrics": metrics,
                    "source": {
                        "path": str(unit.path),
                        "fio_job": unit.job.name,
                        "hostname": unit.job.hostname,
                        "port": unit.job.port,
                    },
                }
                packed.append(PackedRepetition(job.name, repetition, unit.raw, summary))
                rep = job_root / f"r{repetition}"
                measured_here.append(Sample(case.case_id, job.name, repetition, metrics, rep))
        # raw.tar first (the truth, before what was read from it), then summaries.json
        write_packed(case_dir.path, packed)
        # in case order, and in a case by path parts, as scan_run reads them (a string sort
        # would put a job "seq-2" before "seq")
        samples.extend(sorted(measured_here, key=lambda s: s.path))
        case_dir.set_status("ok", source="import")
        case_records.append(CaseRecord(case.case_id, "ok", dict(case.params), case_dir.path))
    run.set_status(
        "complete",
        source="import",
        started=started,
        finished=finished,
        cases=[c.case_id for c in cases],
        failed={},
    )
    # What scan_run would read back from the directory, without reading it back.
    record = RunRecord(
        id=run.run_id,
        path=run.path.resolve(),
        name=spec_name,
        description=description,
        status="complete",
        started=started,
        finished=finished,
        source="import",
        host=None,
        cases=tuple(case_records),
        samples=tuple(samples),
        job_params={n: {k: str(v) for k, v in p.items()} for n, p in jobs.items()},
        stamp=run_stamp(run.path),
    )
    return run, record


# --------------------------------------------------------------------------------------------
# A tree -> runs


def _folders(source: Path, skip: Path | None) -> tuple[dict[Path, list[Path]], int]:
    """Folder -> candidate files (natural order), and how many other files were ignored."""
    folders: dict[Path, list[Path]] = {}
    ignored = 0
    if source.is_file():
        return {source.parent: [source]}, 0
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames, key=natural_key):
            sub = here / d
            if d.startswith(".") or is_run_dir(sub) or (skip is not None and sub == skip):
                continue
            kept.append(d)
        dirnames[:] = kept
        files = []
        for f in sorted(filenames, key=natural_key):
            if f.startswith("."):
                continue
            if f.lower().endswith(CANDIDATE_SUFFIXES):
                files.append(here / f)
            else:
                ignored += 1
        if files:
            folders[here] = files
    return folders, ignored


def import_tree(
    source: Path,
    results_root: Path,
    *,
    name: str | None = None,
    db_path: Path | None = None,
    workers: int | None = None,
) -> ImportResult:
    """Import every folder of fio output under ``source`` as one run each, and index them.

    Folders are parsed and written by ``workers`` processes (default: one per CPU this
    process may run on, at most one per folder); this process indexes each run as it
    arrives, in folder order."""
    if not source.exists():
        raise ResultError(
            "no such file or directory", path=source, hint="pass a folder of fio JSON files"
        )
    if is_run_dir(source):
        raise ResultError(
            "this is a vmlab run directory already",
            path=source,
            hint="it needs no import: `vmlab results reindex` indexes it",
        )
    skip = results_root.resolve() if results_root.exists() else None
    folders, ignored = _folders(source.resolve(), skip)
    db = db_path or default_index_path(results_root)
    runs: list[ImportedRun] = []
    rejected: list[Rejected] = []
    root = source.resolve() if source.is_dir() else source.resolve().parent
    task = partial(
        _import_folder, results_root=results_root, root=root, name=name, folders=len(folders)
    )
    count = min(workers or default_workers(), len(folders))
    with _each(task, folders.items(), count) as outcomes, open_index(db) as conn:
        # one connection; one transaction per run
        for folder, (imported, refused) in zip(folders, outcomes, strict=True):
            rejected.extend(refused)
            if imported is None:
                continue
            index_record(conn, imported.record)
            runs.append(imported.run)
            log.info("imported %s as %s (%d jobs)", folder, imported.run.run_id, imported.run.jobs)
    return ImportResult(tuple(runs), tuple(rejected), ignored)


def default_workers() -> int:
    """Worker processes of an import unless asked: one per CPU this process may run on."""
    return len(os.sched_getaffinity(0))


_T = TypeVar("_T")
_R = TypeVar("_R")


@contextmanager
def _each(task: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[Iterator[_R]]:
    """``task`` of every item, in order: in this process for one worker, else in a pool of
    forked ones (stopped on leaving the block, also on Ctrl-C or an error).

    Only a single-threaded process forks: a child gets just the forking thread, and a lock
    another thread held at that moment (logging's, an allocator's) would stay held in it."""
    if workers <= 1 or threading.active_count() > 1:
        yield map(task, items)
        return
    # fork: the children start at once with vmlab imported, and take no part in signals
    # (Ctrl-C and SIGTERM reach this process, which terminates the pool).
    with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
        yield pool.imap(task, items)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass(frozen=True)
class _Imported:
    """What a worker sends back for one folder: small, so that it pickles fast."""

    run: ImportedRun
    record: RunRecord


def _import_folder(
    item: tuple[Path, Sequence[Path]],
    *,
    results_root: Path,
    root: Path,
    name: str | None,
    folders: int,
) -> tuple[_Imported | None, list[Rejected]]:
    """One folder -> one run directory (None when no file in it is usable), and what was
    refused."""
    folder, files = item
    units: list[Unit] = []
    here: list[Rejected] = []
    for path in files:
        try:
            found, refused = read_units(path)
        except ResultError as exc:
            here.append(Rejected(path, exc.message))
            continue
        except OSError as exc:
            here.append(Rejected(path, f"cannot read: {exc.strerror or exc}"))
            continue
        units.extend(found)
        here.extend(refused)
    if not units:
        return None, here
    relative = folder.relative_to(root).as_posix() if folder != root else ""
    label = slug(relative.replace("/", "-")) or slug(folder.name) or "import"
    run_name = (name if folders == 1 else f"{name}-{label}") if name else label
    case = group_folder(units, folder.name, folder)
    run, record = write_import_record(
        results_root, [case], name=run_name, source=folder, rejected=here
    )
    files_used = len({u.path for j in case.jobs for u in j.repetitions})
    imported = ImportedRun(run.run_id, run.path, folder, len(case.jobs), files_used)
    return _Imported(imported, record), here
