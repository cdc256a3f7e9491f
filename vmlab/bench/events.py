"""What a front end (Rich progress, plain CI logs, tests) hears about a running bench."""

from __future__ import annotations

import logging
from typing import Protocol

from vmlab.plan import Case

log = logging.getLogger(__name__)


class BenchEvents(Protocol):
    def case_started(self, case: Case, index: int, total: int) -> None: ...
    def stage(self, case: Case, what: str) -> None: ...
    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None: ...
    def job_stopped(self, case: Case, job: str, repetitions: int) -> None:
        """A job's repetitions ended after ``repetitions`` (a job that repeats until sure may
        stop before the spec's max)."""
        ...

    def case_finished(self, case: Case, status: str, error: str | None) -> None: ...
    def notice(self, text: str) -> None:
        """Something the person running the bench must not miss (the run switched to TCG)."""
        ...


class QuietEvents:
    """Events as log lines only (the library default)."""

    def case_started(self, case: Case, index: int, total: int) -> None:
        log.info("case %d/%d: %s", index, total, case.id)

    def stage(self, case: Case, what: str) -> None:
        log.info("%s: %s", case.id, what)

    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None:
        log.info("%s: %s r%d done", case.id, job, repetition)

    def job_stopped(self, case: Case, job: str, repetitions: int) -> None:
        log.info("%s: %s stopped after %d repetitions", case.id, job, repetitions)

    def case_finished(self, case: Case, status: str, error: str | None) -> None:
        log.info("%s: %s %s", case.id, status, error or "")

    def notice(self, text: str) -> None:
        log.warning("%s", text)
