"""The host baseline runs fio on the host as root: its stored job file names only the backing
store the spec gave, whatever the job's options say (real fio, a 16 MiB file, 1 s per job)."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest
import yaml

from vmlab.bench.baseline import baseline_case, run_baseline
from vmlab.bench.events import QuietEvents
from vmlab.bench.outcome import BenchOutcome
from vmlab.bench.workloads import JobContext, Repetitions
from vmlab.errors import SpecError
from vmlab.plan import plan
from vmlab.results.rundir import RunDir
from vmlab.spec import Repeat, parse_spec
from vmlab.storage.backing import RunBacking

pytestmark = pytest.mark.skipif(
    shutil.which("fio") is None, reason="needs fio: apt-get install fio"
)

# fio options a user may well write, none of which may move the job off the backing store.
OPTIONS = {"verify": "crc32c", "fsync_on_close": 1, "nrfiles": 1, "offset": "0", "io_size": "8M"}


def spec_text(store: Path, options: dict[str, object]) -> str:
    job = {"name": "j", "rw": "randwrite", "runtime_s": 1, "size": "8M", "options": options}
    return yaml.safe_dump(
        {
            "name": "b",
            "baseline": True,
            "guest": {"disks": [{"name": "data", "backend": {"type": "file", "path": str(store)}}]},
            "jobs": [job],
        }
    )


def run_host_baseline(tmp_path: Path, text: str) -> tuple[RunDir, BenchOutcome]:
    spec = parse_spec(yaml.safe_load(text), source=text)
    case = baseline_case(plan(spec)[0])
    run = RunDir.create(tmp_path / "results", spec.name)
    outcome = BenchOutcome(run=run, cases=[case])
    ctx = JobContext(
        case, run.case(case.id), Repetitions(Repeat(min=1, max=1)), QuietEvents(), outcome
    )
    run_baseline(ctx, RunBacking(tmp_path / "scratch"))
    return run, outcome


def stored_job(run: RunDir) -> configparser.ConfigParser:
    (path,) = (run.path / "cases" / "host-baseline").glob("jobs/*/r*/job.fio")
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(path.read_text())
    return parser


def test_the_host_job_file_names_only_the_specs_backing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    store = tmp_path / "store.raw"
    store.write_bytes(b"\0" * (16 << 20))
    run, outcome = run_host_baseline(tmp_path, spec_text(store, OPTIONS))
    assert outcome.ok, outcome.failed
    job = stored_job(run)
    targets = [
        (section, key, value)
        for section in job.sections()
        for key, value in job.items(section)
        if key in ("filename", "directory", "opendir", "filename_format") or "/" in value
    ]
    assert targets == [("j", "filename", str(store))]
    assert not any(k.startswith("exec_") for s in job.sections() for k in job[s])
    assert outcome.results and outcome.results[0].metrics["write_iops"] > 0
    assert not list(tmp_path.glob("*verify.state"))  # fio's own files stay in the run
    assert list((run.path / "cases" / "host-baseline").glob("jobs/*/r*/*verify.state"))


@pytest.mark.parametrize("option", ["filename", "directory", "exec_prerun"])
def test_options_aimed_elsewhere_never_reach_the_host(
    tmp_path: Path, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # should a regression let fio run, what it writes stays here
    store = tmp_path / "store.raw"
    store.write_bytes(b"\0" * (1 << 20))
    # Harmless stand-ins for /dev/vdb, / and a command, should a regression let them through.
    elsewhere = tmp_path / "elsewhere"
    value = {
        "filename": str(elsewhere),
        "directory": str(tmp_path),
        "exec_prerun": f"touch {elsewhere}",
    }[option]
    with pytest.raises(SpecError, match="is not allowed"):
        run_host_baseline(tmp_path, spec_text(store, {option: value}))
    # And a job that skipped the spec edge (model_copy does not validate) fails the baseline
    # case before fio starts: no job file is written, nothing else is touched.
    spec = parse_spec(yaml.safe_load(spec_text(store, {})))
    job = spec.jobs[0].model_copy(update={"options": {option: value}})
    case = baseline_case(plan(spec.model_copy(update={"jobs": [job]}))[0])
    run = RunDir.create(tmp_path / "results", "smuggled")
    outcome = BenchOutcome(run=run, cases=[case])
    ctx = JobContext(
        case, run.case(case.id), Repetitions(Repeat(min=1, max=1)), QuietEvents(), outcome
    )
    run_baseline(ctx, RunBacking(tmp_path / "scratch"))
    assert "is not allowed" in outcome.failed["host-baseline"]
    assert not list((run.path / "cases" / "host-baseline").glob("jobs/*/r*/job.fio"))
    assert not elsewhere.exists()
