"""What runs inside a booted guest: fio jobs (storage) and iperf3 jobs (network)."""

from __future__ import annotations

from dataclasses import dataclass

from vmlab.bench.events import BenchEvents
from vmlab.bench.outcome import BenchOutcome
from vmlab.plan import Case
from vmlab.results.rundir import CaseDir


@dataclass(frozen=True)
class JobContext:
    """Where a case's job results go and who hears of them."""

    case: Case
    case_dir: CaseDir
    repetitions: range  # r0 is the warm-up (stored, never counted), then r1..rN
    events: BenchEvents
    outcome: BenchOutcome

    def finished(self, job: str, repetition: int, metrics: dict[str, float]) -> None:
        self.outcome.add(self.case.id, job, repetition, metrics)
        self.events.job_finished(self.case, job, repetition, metrics)
