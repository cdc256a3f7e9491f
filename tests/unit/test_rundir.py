from __future__ import annotations

from pathlib import Path

import pytest

from vmlab.errors import ResultError
from vmlab.results.rundir import RunDir


def test_artifacts_are_never_overwritten(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "My Lab!")
    assert run.run_id.endswith("-my-lab-")
    case = run.case("nvme")
    case.job("latency", 1).write_text("fio.json", "{}")
    with pytest.raises(ResultError, match="refusing to overwrite"):
        case.job("latency", 1).write_text("fio.json", "{}")
    assert (tmp_path / run.run_id / "cases/nvme/jobs/latency/r1/fio.json").read_text() == "{}"


def test_two_runs_in_the_same_second_get_distinct_dirs(tmp_path: Path) -> None:
    ids = {RunDir.create(tmp_path, "x").run_id for _ in range(3)}
    assert len(ids) == 3


def test_status_is_replaced_atomically_and_read_back(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    assert run.status() == {"status": "unknown"}
    run.set_status("running", cases=["a"])
    run.set_status("interrupted", cases=["a"])
    assert run.status()["status"] == "interrupted"
    assert not list(run.path.glob(".status*"))


def test_open_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="not a vmlab run directory"):
        RunDir.open(tmp_path)


def test_status_keeps_earlier_fields(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    run.set_status("running", started="t0")
    run.set_status("complete", finished="t1")
    assert run.status()["started"] == "t0" and run.status()["finished"] == "t1"
