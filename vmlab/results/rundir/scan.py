"""Reading run directories: the truth, of which the results index is a cache."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlab.errors import ResultError
from vmlab.results.rundir.dirs import ArtifactDir, RunDir
from vmlab.results.rundir.packed import repetition_summaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One repetition of one job of one case: its flat metrics and where they are stored."""

    case_id: str
    job: str
    repetition: int
    """1, 2, ...; 0 is a warm-up and never enters statistics."""
    metrics: Mapping[str, float]
    path: Path
    """The repetition's directory (fio.json, summary.json...); in a packed (imported) case
    the same path names its entries in the case's summaries.json and raw.tar."""


@dataclass(frozen=True)
class RepeatStop:
    """A job's ``repeat.json``: the repetitions it took and why it stopped (``fixed``, ``ci``,
    ``differs``, ``within-margin``, ``max``; see vmlab.bench.repeat)."""

    repetitions: int
    reason: str
    detail: str


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    status: str
    params: Mapping[str, str]
    path: Path
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # stage marks (status.json)


@dataclass(frozen=True)
class RunRecord:
    """Everything indexable about one run directory."""

    id: str
    path: Path
    name: str
    description: str
    status: str
    started: str | None
    finished: str | None
    source: str
    host: str | None
    cases: tuple[CaseRecord, ...]
    samples: tuple[Sample, ...]
    job_params: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Options of each job (from spec.json), by job name."""
    stamp: int = 0
    stops: Mapping[tuple[str, str], RepeatStop] = field(default_factory=dict)
    """(case, job) -> why its repetitions stopped (runs before vmlab stored it: none)."""
    nested: tuple[Mapping[str, Any], ...] = ()
    """host.json's ``nested``: the facts of each L1 host that served a nested run's cases."""

    def case(self, case_id: str) -> CaseRecord | None:
        return next((c for c in self.cases if c.case_id == case_id), None)

    def jobs(self) -> list[str]:
        """Job names: spec order first, then any others found on disk."""
        found = list(self.job_params)
        for sample in self.samples:
            if sample.job not in found:
                found.append(sample.job)
        return found

    def cells(self) -> dict[tuple[str, str], dict[str, list[float]]]:
        """(case, job) -> metric -> values of the measured repetitions (warm-up r0 excluded),
        in case order, then job order, then repetition order."""
        case_order = {c.case_id: i for i, c in enumerate(self.cases)}
        job_order = {j: i for i, j in enumerate(self.jobs())}
        ordered = sorted(
            (s for s in self.samples if s.repetition >= 1),
            key=lambda s: (
                case_order.get(s.case_id, len(case_order)),
                job_order.get(s.job, len(job_order)),
                s.repetition,
            ),
        )
        out: dict[tuple[str, str], dict[str, list[float]]] = {}
        for sample in ordered:
            cell = out.setdefault((sample.case_id, sample.job), {})
            for metric, value in sample.metrics.items():
                cell.setdefault(metric, []).append(value)
        return out


def _read_json(path: Path) -> Any:
    return ArtifactDir(path.parent).read_optional_json(path.name)


def _mapping(data: Any) -> dict[str, Any]:
    return dict(data) if isinstance(data, dict) else {}


def _flat_options(job: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in job.items():
        if key == "name" or value is None:
            continue
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                out[f"{key}.{sub}"] = str(subvalue)
        elif isinstance(value, bool):
            out[key] = "1" if value else "0"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
    return out


def run_stamp(path: Path) -> int:
    """Changes whenever the run's status changes: what the index compares."""
    for name in ("status.json", "spec.json"):
        try:
            return (path / name).stat().st_mtime_ns
        except OSError:
            continue
    return 0


def _samples(case_dir: Path, case_id: str) -> list[Sample]:
    samples = []
    for job, repetition, data, path in repetition_summaries(case_dir):
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            continue
        metrics: dict[str, float] = {}
        for key, value in data["metrics"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[str(key)] = float(value)
        samples.append(Sample(case_id, job, repetition, metrics, path))
    return samples


def _stops(case_dir: Path, case_id: str) -> dict[tuple[str, str], RepeatStop]:
    stops = {}
    for path in sorted(case_dir.glob("jobs/*/repeat.json")):
        data = _mapping(_read_json(path))
        try:
            stop = RepeatStop(int(data["repetitions"]), str(data["reason"]), str(data["detail"]))
        except (KeyError, TypeError, ValueError):
            log.warning("%s: not a repetition record; ignored", path)
            continue
        stops[(case_id, path.parent.name)] = stop
    return stops


def _fleet_hosts(run: RunDir) -> str | None:
    """A fleet run's hosts, comma-joined (its host facts are under hosts/, not host.json)."""
    fleet = _mapping(_read_json(run.file("fleet.json")))
    hosts = fleet.get("hosts")
    labels = [str(h["host"]) for h in hosts or [] if isinstance(h, dict) and h.get("host")]
    return ",".join(labels) or None


def _timings(value: object) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in _mapping(value).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def scan_run(run_dir: Path) -> RunRecord:
    """Read a run directory into a record. Raises ResultError if it is not a run directory."""
    run = RunDir.open(run_dir)
    spec = _mapping(_read_json(run.file("spec.json")))
    status = run.status()
    host = _mapping(_read_json(run.file("host.json")))
    source = "import" if "import" in (status.get("source"), spec.get("source")) else "native"
    listed = [str(c) for c in status.get("cases", []) if isinstance(c, str)]
    case_dirs = {}
    cases_root = run.path / "cases"
    if cases_root.is_dir():
        for path in sorted(cases_root.iterdir()):
            # "<id>.failed-<time>": an earlier attempt kept by a resumed run, not a case.
            if path.is_dir() and ".failed-" not in path.name:
                case_dirs[path.name] = path
    cases = []
    samples: list[Sample] = []
    stops: dict[tuple[str, str], RepeatStop] = {}
    failed = _mapping(status.get("failed"))
    for case_id in [*listed, *(c for c in case_dirs if c not in listed)]:
        path = case_dirs.get(case_id, cases_root / case_id)
        meta = _mapping(_read_json(path / "case.json"))
        case_status = _mapping(_read_json(path / "status.json"))
        params = {str(k): str(v) for k, v in _mapping(meta.get("params")).items()}
        error = case_status.get("error") or failed.get(case_id)
        cases.append(
            CaseRecord(
                case_id=case_id,
                status=str(case_status.get("status", "unknown")) if path.is_dir() else "not run",
                params=params,
                path=path,
                error=str(error) if error else None,
                timings=_timings(case_status.get("timings")),
            )
        )
        if path.is_dir():
            samples.extend(_samples(path, case_id))
            stops.update(_stops(path, case_id))
    job_params = {
        str(job["name"]): _flat_options(job)
        for job in spec.get("jobs", [])
        if isinstance(job, dict) and "name" in job
    }
    hostname = host.get("hostname") or host.get("host") or _fleet_hosts(run)
    return RunRecord(
        id=run.run_id,
        path=run.path.resolve(),
        name=str(spec.get("name") or run.run_id),
        description=str(spec.get("description") or ""),
        status=str(status.get("status", "unknown")),
        started=status.get("started"),
        finished=status.get("finished"),
        source=source,
        host=str(hostname) if hostname else None,
        cases=tuple(cases),
        samples=tuple(samples),
        job_params=job_params,
        stamp=run_stamp(run.path),
        stops=stops,
        nested=tuple(_mapping(l1) for l1 in host.get("nested") or () if isinstance(l1, dict)),
    )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "spec.json").is_file()


def resolve_run(results_root: Path, ref: str) -> Path:
    """A run given as a directory path or as a run id under ``results_root``."""
    given = Path(ref)
    if is_run_dir(given):
        return given
    under = results_root / ref
    if is_run_dir(under):
        return under
    near = []
    if results_root.is_dir():
        near = sorted(p.name for p in results_root.iterdir() if ref in p.name and is_run_dir(p))
    hint = (
        "did you mean: " + ", ".join(near[:8])
        if near
        else f"`vmlab results list --results {results_root}` shows the run ids; "
        "or pass the path of a run directory"
    )
    raise ResultError(f"no run {ref!r} (neither a run directory nor a run id)", hint=hint)


def run_dirs(results_root: Path) -> list[Path]:
    if not results_root.is_dir():
        return []
    return sorted(p for p in results_root.iterdir() if is_run_dir(p))
