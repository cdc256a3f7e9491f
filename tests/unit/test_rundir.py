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


def test_create_file_writes_everything_once_and_never_over_a_file(tmp_path: Path) -> None:
    from vmlab.results.rundir.dirs import create_file

    data = bytes(range(256)) * 4096  # 1 MiB: more than one write may take
    create_file(tmp_path / "a.bin", data)
    assert (tmp_path / "a.bin").read_bytes() == data
    create_file(str(tmp_path / "empty"), b"")
    assert (tmp_path / "empty").read_bytes() == b""
    with pytest.raises(ResultError, match="refusing to overwrite") as refused:
        create_file(str(tmp_path / "a.bin"), b"other")
    assert refused.value.path == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == data
    with pytest.raises(FileNotFoundError):  # folders are the caller's (write_bytes makes them)
        create_file(tmp_path / "no" / "such" / "folder", b"x")


def test_write_bytes_makes_the_folder_of_its_first_file(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "results", "t")
    target = run.case("c").job("j", 1).write_bytes("fio.json", b"{}")
    assert target == run.path / "cases" / "c" / "jobs" / "j" / "r1" / "fio.json"
    assert target.read_bytes() == b"{}"
