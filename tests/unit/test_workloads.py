"""A guest command that runs past its deadline (GuestSSH.run raises GuestError with
``timed_out`` and what it printed so far) leaves its raw output in the run directory, for fio
and iperf3 alike, before the error goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from vmlab.bench.events import QuietEvents
from vmlab.bench.outcome import BenchOutcome
from vmlab.bench.workloads import JobContext, Repetitions, fio, iperf
from vmlab.errors import GuestError
from vmlab.plan import plan
from vmlab.results.rundir import RunDir
from vmlab.spec import IperfJob, Repeat, parse_spec

PARTIAL_OUT = b'{\n  "fio version" : "fio-3.33",\n  "jobs" : [ {'
PARTIAL_ERR = b"fio: pid=412, got signal=9\n"


class HangingSSH:
    """A guest whose command outlives its deadline, as GuestSSH.run reports it."""

    def __init__(self) -> None:
        self.put_paths: list[str] = []
        self.commands: list[str] = []

    def put(self, data: bytes, remote: str, *, mode: int = 0o644) -> None:
        self.put_paths.append(remote)

    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> Any:
        self.commands.append(command)
        raise GuestError(
            f"guest: {command!r} did not finish within {timeout_s:g} s",
            command=command,
            stdout=PARTIAL_OUT,
            stderr=PARTIAL_ERR,
            timed_out=True,
        )


def context(tmp_path: Path, spec: dict[str, Any]) -> JobContext:
    (case,) = plan(parse_spec(yaml.safe_load(yaml.safe_dump(spec))))
    run = RunDir(path=tmp_path / "run", run_id="run")
    once = Repetitions(Repeat(min=1, max=1))
    return JobContext(case, run.case(case.id), once, QuietEvents(), BenchOutcome(run, [case]))


def job_dir(ctx: JobContext, name: str) -> Path:
    return ctx.case_dir.job(name, 1).path


def test_a_fio_job_past_its_deadline_keeps_its_partial_output(tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        {
            "name": "t",
            "guest": {"disks": [{"name": "data", "backend": {"type": "file", "size": "1G"}}]},
            "jobs": [{"name": "slow", "rw": "randread", "runtime_s": 1}],
        },
    )
    ssh = HangingSSH()
    with pytest.raises(GuestError) as caught:
        fio.run_guest_jobs(ctx, ssh, {"data": "/dev/vdb"}, slack_s=1, guest_ceph=None)  # type: ignore[arg-type]
    assert caught.value.timed_out
    out = job_dir(ctx, "slow")
    assert (out / "fio.json").read_bytes() == PARTIAL_OUT
    assert (out / "fio.stderr").read_bytes() == PARTIAL_ERR
    exit_info = json.loads((out / "exit.json").read_text())
    assert exit_info["timed_out"] is True and exit_info["exit_code"] is None
    assert exit_info["command"] == ssh.commands[0] and "started" in exit_info
    assert (out / "job.fio").is_file()  # the job it ran, saved before it ran
    assert not (out / "summary.json").exists()  # nothing parsed from a cut-off JSON
    assert ctx.outcome.results == []


@contextmanager
def no_server(*_: object, **__: object) -> Iterator[None]:
    yield


def test_an_iperf_job_past_its_deadline_keeps_its_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(
        tmp_path,
        {
            "name": "t",
            "guest": {"nics": [{"name": "lab0"}]},
            "jobs": [],
            "net_jobs": [{"name": "tcp", "duration_s": 1}],
        },
    )
    monkeypatch.setattr(iperf, "IperfServer", no_server)  # a server needs the lab netns
    lab = SimpleNamespace(gateway="10.77.0.1", netns=None)
    jobs = [IperfJob(name="tcp", duration_s=1)]
    with pytest.raises(GuestError):
        iperf.run_net_jobs(ctx, HangingSSH(), lab, jobs)  # type: ignore[arg-type]
    out = job_dir(ctx, "tcp")
    assert (out / "iperf.json").read_bytes() == PARTIAL_OUT
    assert (out / "iperf.stderr").read_bytes() == PARTIAL_ERR
    exit_info = json.loads((out / "exit.json").read_text())
    assert exit_info["timed_out"] is True and "started" in exit_info and "finished" in exit_info
    assert not (out / "summary.json").exists()
