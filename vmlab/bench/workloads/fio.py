"""fio jobs: rendered from the spec, run in the guest (or on the host for the baseline), raw
JSON saved before it is parsed, flat metrics out."""

from __future__ import annotations

import time
from collections.abc import Mapping

from vmlab.bench.workloads import JobContext, raw_output_kept, save_raw
from vmlab.errors import GuestError, ResultError
from vmlab.fio.jobs import fio_command, fio_timeout_s, render_job
from vmlab.fio.parse import parse_fio_output
from vmlab.fio.summary import summarize
from vmlab.guest.ssh import GuestSSH
from vmlab.results.rundir import ArtifactDir, now_iso
from vmlab.storage.guest import GuestCeph


def run_guest_jobs(
    ctx: JobContext,
    ssh: GuestSSH,
    devices: Mapping[str, str],
    *,
    slack_s: float,
    guest_ceph: GuestCeph | None,
) -> None:
    """Every fio job of the case, each repetition in turn, in the guest. fio reads its job file
    from stdin (``fio -``): no copy step, one SSH channel per repetition."""
    for spec_job in ctx.case.jobs:
        job = guest_ceph.fio_job(spec_job) if guest_ceph is not None else spec_job
        text = render_job(job, filename=devices.get(job.disk, ""), case_id=ctx.case.id)
        for repetition in ctx.repeats(job.name):
            job_dir = ctx.case_dir.job(job.name, repetition)
            job_dir.write_text("job.fio", text)
            ctx.events.stage(ctx.case, f"fio {job.name} r{repetition} ({job.runtime_s} s)")
            started, t0 = now_iso(), time.monotonic()
            with raw_output_kept(job_dir, stdout="fio.json", stderr="fio.stderr", started=started):
                result = ssh.run(
                    fio_command("-"),
                    check=False,
                    stdin=text.encode(),
                    timeout_s=fio_timeout_s(job, slack_s=slack_s),
                )
            wall_s = time.monotonic() - t0
            metrics = store_fio(
                job_dir,
                result.stdout,
                result.stderr,
                result.exit_code,
                result.command,
                started,
                job.name,
                wall_s=wall_s,
            )
            ctx.finished(job.name, repetition, metrics)


def store_fio(
    job_dir: ArtifactDir,
    stdout: bytes,
    stderr: bytes,
    exit_code: int,
    command: str,
    started: str,
    job: str,
    *,
    wall_s: float | None = None,
) -> dict[str, float]:
    """Save fio's raw output first, then parse it; returns the flat metrics."""
    timing = {} if wall_s is None else {"wall_s": round(wall_s, 3)}  # fio's start and exit too
    raw = save_raw(
        job_dir,
        "fio.json",
        "fio.stderr",
        stdout,
        stderr,
        exit_code=exit_code,
        started=started,
        command=command,
        **timing,
    )
    if exit_code != 0:
        err = stderr.decode(errors="replace").strip()[-400:]
        raise GuestError(f"fio job {job} exited {exit_code}: {err}", hint=f"see {raw.parent}")
    parsed = parse_fio_output(stdout.decode(errors="replace"), source=str(raw))
    if not parsed.jobs:
        raise ResultError("fio reported no jobs", path=raw)
    metrics = summarize(parsed.jobs[0])
    job_dir.write_json("summary.json", {"metrics": metrics, "fio": parsed.model_dump(mode="json")})
    return metrics
