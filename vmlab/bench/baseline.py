"""The host baseline: fio on the host against the guests' own backing store, the limit a guest
can approach (case ``host-baseline``, shown as "of host" beside every guest case)."""

from __future__ import annotations

import os
import shlex

from vmlab.bench.workloads import JobContext
from vmlab.bench.workloads.fio import store_fio
from vmlab.errors import SpecError, VmlabError
from vmlab.fio.jobs import fio_timeout_s, render_job
from vmlab.metrics import BASELINE_ID
from vmlab.plan import Case
from vmlab.proc import run
from vmlab.render.model import DiskSource
from vmlab.results.rundir import now_iso
from vmlab.spec import FileBackend, FioJob
from vmlab.spec.fiooptions import check_fio_options
from vmlab.storage.backing import Backing, disk_source


def baseline_case(first: Case) -> Case:
    """The baseline measures the first case's disks with the spec's jobs."""
    return Case(id=BASELINE_ID, params={"host": "baseline"}, variant=first.variant, jobs=first.jobs)


def host_fio_job(job: FioJob, source: DiskSource) -> tuple[FioJob, dict[str, str]]:
    """The job as fio on the host runs it against a disk's backing store, and its environment
    (FILENAME for files and devices; RBD goes through fio's rbd engine, CEPH_CONF, and the
    spec's keyring through CEPH_ARGS).

    fio runs as root here: options that would aim it elsewhere are refused at the spec edge, and
    checked again here, for a job that reached this point some other way."""
    try:
        check_fio_options(job.options)
    except ValueError as exc:
        raise SpecError(
            f"job {job.name}: {exc}", hint="the host baseline runs only against the spec's disks"
        ) from exc
    if source.rbd is None:
        return job, {"FILENAME": str(source.path)}
    options = {
        **job.options,
        "clientname": source.rbd.user,
        "pool": source.rbd.pool,
        "rbdname": source.rbd.image,
    }
    env = {"CEPH_CONF": str(source.rbd.conf), "CEPH_ARGS": f"--keyring {source.rbd.keyring}"}
    return job.model_copy(update={"ioengine": "rbd", "options": options}), env


def baseline_sources(case: Case, backing: Backing) -> dict[str, DiskSource]:
    """Each disk's backing store as fio on the host writes it: raw bytes, so a qcow2 file is
    replaced by a raw scratch file of its size (the guests' qcow2 stays intact), and so is a
    malloc disk, which lives inside SPDK."""
    sources: dict[str, DiskSource] = {}
    for disk in case.variant.guest.disks:
        source = disk_source(backing, case, disk)
        if source.format != "raw" or source.protocol == "malloc":
            size = getattr(disk.backend, "size", "1G")
            raw = disk.model_copy(update={"backend": FileBackend(size=size)})
            source = disk_source(backing, case, raw)
        sources[disk.name] = source
    return sources


def run_baseline(ctx: JobContext, backing: Backing) -> None:
    """Every job of the spec, fio on the host; the case is recorded ok or failed."""
    case, case_dir = ctx.case, ctx.case_dir
    sources = baseline_sources(case, backing)
    case_dir.write_json(
        "case.json",
        {
            "id": case.id,
            "params": dict(case.params),
            "targets": {name: str(s.path) for name, s in sources.items()},
        },
    )
    case_dir.set_status("running", started=now_iso())
    try:
        for job in case.jobs:
            host_job, env = host_fio_job(job, sources[job.disk])
            filename = env.pop("FILENAME", "")
            text = render_job(host_job, filename=filename, case_id=case.id)
            for repetition in ctx.repeats(job.name):
                job_dir = case_dir.job(job.name, repetition)
                path = job_dir.write_text("job.fio", text)
                ctx.events.stage(case, f"host fio {job.name} r{repetition}")
                argv = ["fio", "--output-format=json+", str(path)]
                started = now_iso()
                done = run(
                    argv,
                    timeout_s=fio_timeout_s(job, slack_s=60),
                    check=False,
                    env={**os.environ, **env},
                    cwd=path.parent,  # fio's own files (verify state) stay in the run
                    what="host fio",
                    missing_hint="apt-get install fio",
                )
                metrics = store_fio(
                    job_dir,
                    done.stdout,
                    done.stderr,
                    done.returncode,
                    shlex.join(argv),
                    started,
                    job.name,
                )
                ctx.finished(job.name, repetition, metrics)
    except VmlabError as exc:
        ctx.outcome.failed[case.id] = str(exc)
        case_dir.set_status("failed", error=str(exc), hint=exc.hint)
        ctx.events.case_finished(case, "failed", str(exc))
        return
    case_dir.set_status("ok", finished=now_iso())
    ctx.events.case_finished(case, "ok", None)
