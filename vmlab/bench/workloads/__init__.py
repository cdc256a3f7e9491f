"""What runs inside a booted guest: fio jobs (storage) and iperf3 jobs (network)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.bench.events import BenchEvents
from vmlab.bench.outcome import BenchOutcome
from vmlab.bench.repeat import Stop, decide
from vmlab.errors import GuestError
from vmlab.metrics import stop_metric
from vmlab.plan import Case
from vmlab.results.rundir import ArtifactDir, CaseDir, now_iso
from vmlab.spec import Repeat


@dataclass(frozen=True)
class Repetitions:
    """How every job of a case repeats: r0, the warm-up (stored, never counted) when asked,
    then r1, r2... until the spec's rule stops the job (:mod:`vmlab.bench.repeat`)."""

    rule: Repeat
    warmup: bool = False
    reference: str | None = None
    """The case the job's values are compared with under ``until: significant`` (None: the
    case is the reference itself, or the rule does not compare)."""


@dataclass(frozen=True)
class JobContext:
    """Where a case's job results go and who hears of them."""

    case: Case
    case_dir: CaseDir
    repetitions: Repetitions
    events: BenchEvents
    outcome: BenchOutcome

    def finished(self, job: str, repetition: int, metrics: dict[str, float]) -> None:
        self.outcome.add(self.case.id, job, repetition, metrics)
        self.events.job_finished(self.case, job, repetition, metrics)

    def repeats(self, job: str) -> Iterator[int]:
        """The repetition numbers to run ``job`` for: each one is decided after the one before
        has finished (:meth:`finished`). The stop is stored as ``jobs/<job>/repeat.json``.

        A case resumed after an interrupt carries the repetitions it had finished: a job that
        had stopped runs none, one that had not goes on counting after them (after a warm-up
        of its own in the new guest, when the spec asks for one)."""
        if self.case_dir.repeated(job):
            return
        done = [r.repetition for r in self.outcome.of(self.case.id, job)]
        if self.repetitions.warmup:
            yield 0
        repetition = max(done, default=0) + 1
        while True:
            yield repetition
            stop = self._decide(job, repetition)
            if stop is not None:
                self.case_dir.write_repeat(job, stop.to_json())
                self.events.job_stopped(self.case, job, stop.repetitions)
                self.events.stage(
                    self.case,
                    f"{job}: {stop.repetitions} repetitions, {stop.reason}: {stop.detail}",
                )
                return
            repetition += 1

    def values(self, case_id: str, job: str) -> list[float]:
        """The stop metric of the measured repetitions of ``job`` in ``case_id`` so far."""
        measured = [r.metrics for r in self.outcome.of(case_id, job) if r.repetition >= 1]
        return [v for m in measured if (v := m.get(stop_metric(m))) is not None]

    def _decide(self, job: str, repetition: int) -> Stop | None:
        rule, reference = self.repetitions.rule, self.repetitions.reference
        values = self.values(self.case.id, job)
        stop = decide(
            rule,
            values,
            reference=self.values(reference, job) if reference else None,
            against=reference,
        )
        if stop is None and repetition >= rule.max:  # a repetition that reported no value
            stop = Stop(len(values), "max", f"max reached: {len(values)} values of {repetition}")
        return stop


def save_raw(
    job_dir: ArtifactDir,
    out_name: str,
    err_name: str,
    stdout: bytes,
    stderr: bytes,
    **exit_fields: Any,
) -> Path:
    """A job's raw output as ``out_name`` and ``err_name`` in ``job_dir``, with an
    ``exit.json`` of ``exit_fields`` and when it finished (now): written before anything parses
    it. Returns the path of the saved stdout."""
    raw = job_dir.write_bytes(out_name, stdout)
    job_dir.write_bytes(err_name, stderr)
    job_dir.write_json("exit.json", {**exit_fields, "finished": now_iso()})
    return raw


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
        save_raw(
            job_dir,
            stdout,
            stderr,
            exc.stdout,
            exc.stderr,
            **exit_info,
            exit_code=exc.exit_code,
            timed_out=exc.timed_out,
            error=str(exc),
            command=exc.command,
        )
        raise
