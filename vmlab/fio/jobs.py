"""fio job files rendered from templates/fio/job.fio.j2, and how to run one in a guest."""

from __future__ import annotations

import shlex

from vmlab.render import render_text
from vmlab.spec import FioJob


def render_job(job: FioJob, *, filename: str, case_id: str) -> str:
    return render_text("fio/job.fio.j2", job=job, filename=filename, case_id=case_id)


def fio_command(job_path: str) -> str:
    """The command run in the guest: JSON (with latency histograms) to stdout. ``job_path``
    ``-`` makes fio read the job file from stdin."""
    return shlex.join(["fio", "--output-format=json+", job_path])


def fio_timeout_s(job: FioJob, *, slack_s: float) -> float:
    """How long to let fio run before calling it hung: its own runtime plus slack."""
    return job.runtime_s + job.ramp_s + slack_s
