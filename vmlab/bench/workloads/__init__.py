"""What runs inside a booted guest: fio jobs (storage) and iperf3 jobs (network)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vmlab.bench.events import BenchEvents
from vmlab.bench.outcome import BenchOutcome
from vmlab.errors import GuestError
from vmlab.plan import Case
from vmlab.results.rundir import ArtifactDir, CaseDir, now_iso


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


@contextmanager
def raw_output_kept(
    job_dir: ArtifactDir, *, stdout: str, stderr: str, **exit_info: Any
) -> Iterator[None]:
    """Around a guest command whose output is a result: if it fails before it returns (past
    its deadline, or the SSH connection lost), what it printed so far is saved as ``stdout``
    and ``stderr`` in ``job_dir``, with an ``exit.json`` that says why, before the GuestError
    goes on. Raw output is never lost, least of all from the run that went wrong."""
    try:
        yield
    except GuestError as exc:
        job_dir.write_bytes(stdout, exc.stdout)
        job_dir.write_bytes(stderr, exc.stderr)
        job_dir.write_json(
            "exit.json",
            {
                **exit_info,
                "exit_code": exc.exit_code,
                "timed_out": exc.timed_out,
                "error": str(exc),
                "finished": now_iso(),
                "command": exc.command,
            },
        )
        raise
