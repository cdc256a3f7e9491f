"""The run directory: every artifact of a bench, written before it is interpreted.

    results/<run-id>/
      spec.yaml  spec.json  host.json  status.json
      cases/<case-id>/
        case.json  argv.json  argv.sh  qemu.log  serial.log  guest.json  status.json
        jobs/<job>/r<N>/  job.fio  fio.json (raw stdout)  fio.stderr  exit.json  summary.json
      attempts/<case-id>.<n>/   what an interrupted or failed case left before a --resume

Artifacts are created exclusively: a second write to the same name is a bug and raises.
Only status.json files change, and they are replaced atomically; so is host.json, once, when
a run finds at run time that KVM fails under its guests and switches to TCG (the switch is
recorded inside it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vmlab.errors import ResultError
from vmlab.spec import BenchSpec


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ArtifactDir:
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with target.open("xb") as fh:
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

    def exists(self) -> bool:
        return self.path.is_dir()

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

    def replace_host_facts(self, facts: Any) -> None:
        """host.json again, after the run switched accelerator (see the module docstring)."""
        self._replace_json("host.json", facts)

    def case(self, case_id: str) -> CaseDir:
        return CaseDir(path=self.path / "cases" / case_id, case_id=case_id)

    def archive_case(self, case_id: str) -> Path | None:
        """Move what an earlier attempt of the case left to ``attempts/<case>.<n>`` (a resumed
        or rerun case starts empty; nothing is lost). Returns where it went."""
        case = self.case(case_id)
        if not case.exists():
            return None
        attempts = self.path / "attempts"
        attempts.mkdir(exist_ok=True)
        n = 1 + sum(1 for _ in attempts.glob(f"{case_id}.*"))
        target = attempts / f"{case_id}.{n}"
        case.path.rename(target)
        return target
