"""Writing a run directory: run, case and job folders whose artifacts are created exclusively
(see :mod:`vmlab.results.rundir` for the layout)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vmlab.errors import ResultError
from vmlab.results.rundir.files import create_file, json_bytes, read_optional_json
from vmlab.results.rundir.packed import repetition_summaries

if TYPE_CHECKING:
    from vmlab.spec import BenchSpec

log = logging.getLogger(__name__)


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
            create_file(target, data)
        except FileNotFoundError:  # the first file of its folder
            target.parent.mkdir(parents=True, exist_ok=True)
            create_file(target, data)
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_bytes(name, json_bytes(data))

    def read_optional_json(self, name: str) -> Any:
        """The JSON in ``name``, or None when it is missing or unreadable (logged)."""
        return read_optional_json(self.path / name)

    def read_json(self, name: str) -> Any:
        target = self.path / name
        try:
            return json.loads(target.read_text())
        except (OSError, ValueError) as exc:
            raise ResultError(f"cannot read {name}: {exc}", path=target) from exc

    def _replace_json(self, name: str, data: Any) -> None:
        tmp, text = self.path / f".{name}.tmp", json_bytes(data)
        try:
            tmp.write_bytes(text)
        except FileNotFoundError:  # the first file of its folder (a mkdir for each status
            self.path.mkdir(parents=True, exist_ok=True)  # costs 0.2 ms on this disk)
            tmp.write_bytes(text)
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
        return [
            (job, repetition, {str(k): float(v) for k, v in data["metrics"].items()})
            for job, repetition, data, _ in repetition_summaries(self.path)
        ]


@dataclass(frozen=True)
class RunDir(ArtifactDir):
    run_id: str

    @classmethod
    def create(cls, results_root: Path, name: str) -> RunDir:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{re.sub(r'[^a-z0-9.-]+', '-', name.lower())}"
        for attempt in range(1, 1000):
            run_id = base if attempt == 1 else f"{base}-{attempt}"
            path = results_root / run_id
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except FileNotFoundError:  # the first run of a new results root
                results_root.mkdir(parents=True, exist_ok=True)
                path.mkdir()
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
        """The spec this run ran, exactly (overrides such as --runtime included), with the
        YAML it was written in as its ``source`` (a nested run's resume rebuilds L1's from it)."""
        from pydantic import ValidationError  # the spec models: only for the runs that need them

        from vmlab.spec import BenchSpec

        try:
            text = self.file("spec.yaml").read_text()
        except OSError:
            text = ""
        try:
            return BenchSpec.model_validate({**self.read_json("spec.json"), "source": text})
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
