"""What a bench is asked to do (options) and what it found (outcome)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vmlab.host import AccelSwitch
from vmlab.paths import state_dir
from vmlab.plan import Case
from vmlab.results.rundir import RunDir


@dataclass(frozen=True)
class BenchOptions:
    results_root: Path
    timeout_scale: float = 1.0
    accel: str | None = None  # overrides the spec's accel for every case
    launcher: str | None = None  # overrides the spec's launcher for every case
    skip_unsupported: bool = False  # run what this host can, record the rest as unsupported
    libvirt_uri: str = "qemu:///system"
    lab_key_path: Path = field(default_factory=lambda: state_dir() / "lab" / "id_ed25519")


@dataclass
class JobOutcome:
    case_id: str
    job: str
    repetition: int
    metrics: dict[str, float]


@dataclass
class BenchOutcome:
    run: RunDir
    cases: list[Case]
    failed: dict[str, str] = field(default_factory=dict)
    results: list[JobOutcome] = field(default_factory=list)
    accel_switch: AccelSwitch | None = None  # the run started under KVM and went on under TCG

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, case_id: str, job: str, repetition: int, metrics: dict[str, float]) -> None:
        self.results.append(JobOutcome(case_id, job, repetition, metrics))

    def of(self, case_id: str, job: str | None = None) -> list[JobOutcome]:
        """The results of one case (and job), in the order they came."""
        return [r for r in self.results if r.case_id == case_id and job in (None, r.job)]

    def forget(self, keep: set[str]) -> None:
        """Drop every result and failure but those of the cases in ``keep``."""
        self.results = [r for r in self.results if r.case_id in keep]
        self.failed = {k: v for k, v in self.failed.items() if k in keep}
