"""The run directory: every artifact of a bench, written before it is interpreted.

    results/<run-id>/
      spec.yaml  spec.json  host.json  status.json
      cases/<case-id>/
        case.json  argv.json  argv.sh  qemu.log  serial.log  guest.json  status.json
        jobs/<job>/r<N>/  job.fio  fio.json (raw stdout)  fio.stderr  exit.json  summary.json
        jobs/<job>/repeat.json   how many repetitions the job took and why it stopped
      attempts/<case-id>.<n>/   what an interrupted or failed case left before a --resume

Artifacts are created exclusively: a second write to the same name is a bug and raises.
Only status.json files change, and they are replaced atomically; so is host.json, once, when
a run finds at run time that KVM fails under its guests and switches to TCG (the switch is
recorded inside it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from vmlab.errors import ResultError
from vmlab.spec import BenchSpec

log = logging.getLogger(__name__)


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


_ARGV_FILE = re.compile(r"^argv(?:\.(\d+))?\.sh$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ArtifactDir:
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path / name
        try:
            try:
                fh = target.open("xb")
            except FileNotFoundError:  # the first file of its folder
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = target.open("xb")
            with fh:
                fh.write(data)
        except FileExistsError as exc:
            raise ResultError(
                "refusing to overwrite an artifact",
                path=target,
                hint="results are never overwritten; start a new run",
            ) from exc
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, _dump(data))

    def read_optional_json(self, name: str) -> Any:
        """The JSON in ``name``, or None when it is missing or unreadable (logged)."""
        target = self.path / name
        try:
            return json.loads(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); ignored", target, exc)
            return None

    def read_json(self, name: str) -> Any:
        target = self.path / name
        try:
            return json.loads(target.read_text())
        except (OSError, ValueError) as exc:
            raise ResultError(f"cannot read {name}: {exc}", path=target) from exc

    def _replace_json(self, name: str, data: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(_dump(data))
        tmp.replace(self.path / name)

    def set_status(self, status: str, **fields: Any) -> None:
        """Replace status.json atomically (the one file that changes during a run).

        Fields given before (such as `started`) are kept unless given again.
        """
        previous = self.status() if (self.path / "status.json").exists() else {}
        self._replace_json(
            "status.json", {**previous, "status": status, "updated": now_iso(), **fields}
        )

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return {"status": "unknown"}
        return dict(data)


@dataclass(frozen=True)
class CaseDir(ArtifactDir):
    case_id: str

    def job(self, name: str, repetition: int) -> ArtifactDir:
        return ArtifactDir(self.path / "jobs" / name / f"r{repetition}")

    def write_repeat(self, job: str, record: Mapping[str, Any]) -> Path:
        """``jobs/<job>/repeat.json``: how many repetitions the job took and why it stopped."""
        return ArtifactDir(self.path / "jobs" / job).write_json("repeat.json", dict(record))

    def repeated(self, job: str) -> bool:
        """The job's repetitions have stopped (it has a ``repeat.json``)."""
        return (self.path / "jobs" / job / "repeat.json").is_file()

    def carry_repetitions(self, attempt: Path) -> dict[str, int]:
        """Copy into this (new) case the measured repetitions an interrupted attempt finished:
        per job r1..rN as far as each has a summary.json, and its repeat.json if the job had
        stopped. The warm-up r0 is not carried (a new boot warms up again). The attempt stays
        whole under attempts/. Returns job -> repetitions carried."""
        carried: dict[str, int] = {}
        for job_dir in sorted((attempt / "jobs").glob("*")):
            n = 0
            while (job_dir / f"r{n + 1}" / "summary.json").is_file():
                n += 1
                shutil.copytree(job_dir / f"r{n}", self.path / "jobs" / job_dir.name / f"r{n}")
            if n and (job_dir / "repeat.json").is_file():
                shutil.copy2(job_dir / "repeat.json", self.path / "jobs" / job_dir.name)
            if n:
                carried[job_dir.name] = n
        return carried

    def exists(self) -> bool:
        return self.path.is_dir()

    def command(self, limit: int) -> tuple[Literal["argv", "xml"] | None, str | None]:
        """The exact command line (argv.sh, the last attempt's) or libvirt domain XML that ran
        the case, at most ``limit`` characters."""
        found: list[tuple[Literal["argv", "xml"], Path]] = []
        if (self.path / "domain.xml").is_file():
            found.append(("xml", self.path / "domain.xml"))
        # argv.sh, then argv.2.sh, argv.3.sh... for boot retries: the last attempt is what ran
        attempts = sorted(
            (int(m.group(1) or 1), p)
            for p in self.path.glob("argv*.sh")
            if (m := _ARGV_FILE.match(p.name))
        )
        if attempts:
            found.append(("argv", attempts[-1][1]))
        if not found:
            return None, None
        kind, path = found[0]
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("%s: %s", path, exc)
            return None, None
        return kind, text[:limit]

    def stored_metrics(self) -> list[tuple[str, int, dict[str, float]]]:
        """(job, repetition, flat metrics) of every repetition that has a summary."""
        out = []
        for summary in sorted(self.path.glob("jobs/*/r*/summary.json")):
            match = re.fullmatch(r"r(\d+)", summary.parent.name)
            if match is None:
                continue
            data = json.loads(summary.read_text())
            metrics = {str(k): float(v) for k, v in data["metrics"].items()}
            out.append((summary.parent.parent.name, int(match.group(1)), metrics))
        return out


@dataclass(frozen=True)
class RunDir(ArtifactDir):
    run_id: str

    @classmethod
    def create(cls, results_root: Path, name: str) -> RunDir:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{re.sub(r'[^a-z0-9.-]+', '-', name.lower())}"
        results_root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            run_id = base if attempt == 1 else f"{base}-{attempt}"
            path = results_root / run_id
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path=path, run_id=run_id)
        raise ResultError("cannot allocate a run directory", path=results_root)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        if not (path / "spec.json").is_file():
            raise ResultError(
                "not a vmlab run directory (no spec.json)",
                path=path,
                hint="pass a directory under results/, e.g. results/<run-id>",
            )
        return cls(path=path, run_id=path.name)

    def spec(self) -> BenchSpec:
        """The spec this run ran, exactly (overrides such as --runtime included)."""
        try:
            return BenchSpec.model_validate(self.read_json("spec.json"))
        except ValidationError as exc:
            raise ResultError(
                f"spec.json does not validate: {exc}",
                path=self.path,
                hint="was it written by another vmlab version?",
            ) from exc

    # -- a fleet run: host runs merged into one (vmlab.fleet.merge) -------------------------

    def case_ids_on_disk(self) -> list[str]:
        cases = self.path / "cases"
        return sorted(p.name for p in cases.iterdir() if p.is_dir()) if cases.is_dir() else []

    def adopt_case(self, source: CaseDir, new_id: str, *, host: str) -> None:
        """Move another run's case here as ``new_id``; its case.json gains the host (first in
        ``params``) and keeps the id the host gave as ``host_case_id``."""
        dest = self.case(new_id)
        dest.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source.path), str(dest.path))
        meta = dest.read_optional_json("case.json")
        meta = dict(meta) if isinstance(meta, dict) else {}
        raw = meta.get("params")
        params: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
        meta.update(
            {
                "id": new_id,
                "host": host,
                "host_case_id": source.case_id,
                "params": {"host": host, **{k: v for k, v in params.items() if k != "host"}},
            }
        )
        dest._replace_json("case.json", meta)

    def adopt_host(self, source: RunDir, label: str, extra: Sequence[Path] = ()) -> Path:
        """What is left of a host's run after its cases were adopted: host.json becomes
        ``hosts/<label>.json``, everything else (and ``extra`` files that came with it) goes
        to ``hosts/<label>/``; the emptied run directory is removed. Returns that folder."""
        hosts = self.path / "hosts"
        keep = hosts / label
        keep.mkdir(parents=True, exist_ok=True)
        if source.file("host.json").is_file():
            shutil.move(str(source.file("host.json")), str(hosts / f"{label}.json"))
        cases = source.path / "cases"
        if cases.is_dir() and not any(cases.iterdir()):
            cases.rmdir()
        for item in [*source.path.iterdir(), *extra]:
            shutil.move(str(item), str(keep / item.name))
        source.path.rmdir()
        return keep

    def keep_host_files(self, label: str, folder: Path) -> None:
        """A host that sent no run back: keep whatever it sent (bench.log) under hosts/."""
        (self.path / "hosts").mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(self.path / "hosts" / label))

    def copy_spec_from(self, folder: Path) -> bool:
        """spec.json (and spec.yaml) from a host's kept run files; False if it has none."""
        if not (folder / "spec.json").is_file():
            return False
        shutil.copyfile(folder / "spec.json", self.file("spec.json"))
        if (folder / "spec.yaml").is_file():
            shutil.copyfile(folder / "spec.yaml", self.file("spec.yaml"))
        return True

    def write_fleet(self, data: Any) -> None:
        self._replace_json("fleet.json", data)

    def replace_host_facts(self, facts: Any) -> None:
        """host.json again, after the run switched accelerator (see the module docstring)."""
        self._replace_json("host.json", facts)

    def case(self, case_id: str) -> CaseDir:
        return CaseDir(path=self.path / "cases" / case_id, case_id=case_id)

    def archive_case(self, case_id: str) -> Path | None:
        """Move what an earlier attempt of the case left to ``attempts/<case>.<n>`` (a resumed
        or rerun case starts empty, but for the repetitions :meth:`CaseDir.carry_repetitions`
        copies back; nothing is lost). Returns where it went."""
        case = self.case(case_id)
        if not case.exists():
            return None
        attempts = self.path / "attempts"
        attempts.mkdir(exist_ok=True)
        n = 1 + sum(1 for _ in attempts.glob(f"{case_id}.*"))
        target = attempts / f"{case_id}.{n}"
        case.path.rename(target)
        return target


# --------------------------------------------------------------------------------------------
# Reading run directories (the truth; the index is a cache of this)


@dataclass(frozen=True)
class Sample:
    """One repetition of one job of one case: its flat metrics and where they are stored."""

    case_id: str
    job: str
    repetition: int
    """1, 2, ...; 0 is a warm-up and never enters statistics."""
    metrics: Mapping[str, float]
    path: Path
    """The repetition's directory (fio.json, summary.json...)."""


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


_REPETITION = re.compile(r"^r(\d+)$")


def _samples(case_dir: Path, case_id: str) -> list[Sample]:
    samples = []
    for summary in sorted(case_dir.glob("jobs/*/r*/summary.json")):
        match = _REPETITION.match(summary.parent.name)
        data = _read_json(summary)
        if match is None or not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            continue
        metrics: dict[str, float] = {}
        for key, value in data["metrics"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[str(key)] = float(value)
        samples.append(
            Sample(
                case_id, summary.parent.parent.name, int(match.group(1)), metrics, summary.parent
            )
        )
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
