"""The SQLite results index: schema migrations, indexing, listing, removal, rebuild, CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from runs_fixture import make_run
from typer.testing import CliRunner

from vmlab.cli.results import app
from vmlab.errors import ResultError
from vmlab.results.index import (
    MIGRATIONS,
    SyncResult,
    default_index_path,
    get_run,
    index_record,
    index_run,
    list_runs,
    open_index,
    query_metrics,
    reindex,
    remove_run,
    schema_version,
    sync_index,
)
from vmlab.results.rundir import resolve_run, scan_run

CELLS = {
    ("virtio-blk", "latency"): {"read_iops": [100.0, 110.0, 105.0], "write_iops": [10.0, 11, 12]},
    ("nvme", "latency"): {"read_iops": [200.0, 210.0, 190.0]},
    ("nvme", "throughput"): {"read_iops": [900.0, 950.0]},
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    return root


def _count(db: Path, table: str) -> int:
    with open_index(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_index_run_is_idempotent(results: Path) -> None:
    run = make_run(results, "run-a", CELLS, warmup={("nvme", "latency"): {"read_iops": [1.0]}})
    db = default_index_path(results)
    index_run(db, run)
    counts = {t: _count(db, t) for t in ("runs", "cases", "parameters", "metrics")}
    index_run(db, run)
    assert {t: _count(db, t) for t in counts} == counts
    # 3+3 + 3 + 2 measured values, + the warm-up value
    assert counts["metrics"] == 12
    assert counts["cases"] == 2
    row = get_run(db, "run-a")
    assert (row.status, row.source, row.cases) == ("complete", "native", 2)
    assert row.samples == 8  # distinct (case, job, repetition) with repetition >= 1
    assert row.path == run.resolve()


def test_reindexing_replaces_changed_rows(results: Path) -> None:
    run = make_run(results, "run-a", CELLS)
    db = default_index_path(results)
    index_run(db, run)
    summary = run / "cases/nvme/jobs/latency/r1/summary.json"
    summary.write_text(json.dumps({"metrics": {"read_iops": 999.0}}))
    index_run(db, run)
    values = [r.value for r in query_metrics(db, metric="read_iops", run="run-a")]
    assert 999.0 in values and 200.0 not in values


def test_migrations_apply_in_order_and_once(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    latest = len(MIGRATIONS)
    with open_index(db) as conn:
        assert schema_version(conn) == latest
    calls: list[int] = []

    def migration_next(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    with_next = (*MIGRATIONS, migration_next)
    with open_index(db, migrations=with_next) as conn:
        assert schema_version(conn) == latest + 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert "note" in columns
    with open_index(db, migrations=with_next) as conn:
        assert schema_version(conn) == latest + 1
    assert calls == [1]


def test_migration_2_counts_the_cases_and_samples_of_indexed_runs(results: Path) -> None:
    db = default_index_path(results)
    warmup = {("nvme", "latency"): {"read_iops": [1.0]}}
    index_run(db, make_run(results, "run-a", CELLS, warmup=warmup))
    index_run(db, make_run(results, "run-b", {("nvme", "latency"): {"read_iops": [5.0]}}))
    written = list_runs(db)
    with open_index(db) as conn:  # back to a v1 index, rows and all
        conn.execute("ALTER TABLE runs DROP COLUMN cases")
        conn.execute("ALTER TABLE runs DROP COLUMN samples")
        conn.execute("PRAGMA user_version = 1")
    migrated = list_runs(db)
    assert [(r.id, r.cases, r.samples) for r in migrated] == [
        (r.id, r.cases, r.samples) for r in written
    ]
    assert sorted((r.id, r.cases, r.samples) for r in written) == [("run-a", 2, 8), ("run-b", 1, 1)]


def test_migration_3_keeps_every_metric_row_in_a_table_without_rowid(results: Path) -> None:
    db = default_index_path(results)
    warmup = {("nvme", "latency"): {"read_iops": [1.0]}}
    with open_index(db, migrations=MIGRATIONS[:2]) as conn:  # a v2 index, rows and all
        index_record(conn, scan_run(make_run(results, "run-a", CELLS, warmup=warmup)))
        rows = sorted(conn.execute("SELECT * FROM metrics"))
        assert "metrics_by_name" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    with open_index(db) as conn:
        assert schema_version(conn) == 3
        assert sorted(conn.execute("SELECT * FROM metrics")) == rows and len(rows) > 10
        schema = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
        assert "metrics_by_name" not in schema
        assert schema["metrics"].rstrip().endswith("WITHOUT ROWID")
        # the cascade from runs still reaches the rebuilt table
        conn.execute("DELETE FROM runs WHERE id = 'run-a'")
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (0,)


def test_a_failing_migration_leaves_the_old_version(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    with open_index(db):
        pass

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError), open_index(db, migrations=(*MIGRATIONS, broken)):
        pass
    with open_index(db) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables


def test_a_newer_index_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ResultError) as info, open_index(db):
        pass
    assert "99" in str(info.value)
    assert info.value.hint and "reindex" in info.value.hint


def test_a_corrupt_index_says_how_to_rebuild(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultError) as info, open_index(db):
        pass
    assert info.value.hint and "reindex" in info.value.hint


def test_list_get_and_remove(results: Path) -> None:
    db = default_index_path(results)
    older = make_run(results, "run-old", CELLS)
    newer = make_run(results, "run-new", CELLS)
    status = json.loads((newer / "status.json").read_text())
    status["started"] = "2025-01-01T00:00:00+00:00"
    (newer / "status.json").write_text(json.dumps(status))
    index_run(db, older)
    index_run(db, newer)
    assert [r.id for r in list_runs(db)] == ["run-new", "run-old"]
    remove_run(db, "run-old", delete_files=False)
    assert older.is_dir()
    assert [r.id for r in list_runs(db)] == ["run-new"]
    remove_run(db, "run-new", delete_files=True)
    assert not newer.exists()
    assert list_runs(db) == []
    assert _count(db, "metrics") == 0  # cascaded
    with pytest.raises(ResultError, match="not in the index"):
        get_run(db, "run-new")


def test_remove_refuses_a_directory_that_is_not_a_run(results: Path) -> None:
    db = default_index_path(results)
    run = make_run(results, "run-a", CELLS)
    index_run(db, run)
    (run / "spec.json").unlink()
    with pytest.raises(ResultError, match="refusing"):
        remove_run(db, "run-a", delete_files=True)
    assert run.is_dir()


def test_reindex_rebuilds_from_the_files(results: Path) -> None:
    db = default_index_path(results)
    make_run(results, "run-a", CELLS)
    make_run(results, "run-b", CELLS)
    (results / "not-a-run").mkdir()
    first = reindex(results)
    assert sorted(first.indexed) == ["run-a", "run-b"]
    db.unlink()
    again = reindex(results)
    assert sorted(again.indexed) == ["run-a", "run-b"]
    assert _count(db, "runs") == 2
    shutil.rmtree(results / "run-b")
    third = reindex(results)
    assert third.indexed == ("run-a",)
    assert third.removed == ("run-b",)


def test_sync_indexes_new_and_changed_runs(results: Path) -> None:
    db = default_index_path(results)
    run = make_run(results, "run-a", CELLS, status="running")
    assert sync_index(results).indexed == ("run-a",)
    assert sync_index(results).indexed == ()  # unchanged: not read again
    status = json.loads((run / "status.json").read_text())
    status["status"] = "complete"
    (run / "status.json").write_text(json.dumps(status))
    st = (run / "status.json").stat()
    os.utime(run / "status.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sync_index(results).indexed == ("run-a",)
    assert get_run(db, "run-a").status == "complete"


def test_sync_reads_only_what_changed_and_drops_what_is_gone(results: Path) -> None:
    db = default_index_path(results)
    kept = make_run(results, "run-a", CELLS)
    bare = make_run(results, "run-b", CELLS)
    (bare / "status.json").unlink()  # stamped by its spec.json instead
    gone = make_run(results, "run-c", CELLS)
    (results / "not-a-run").mkdir()
    (results / "index-notes.txt").write_text("a file, not a run")
    assert sorted(sync_index(results).indexed) == ["run-a", "run-b", "run-c"]
    assert sync_index(results) == SyncResult()  # nothing changed: nothing read
    shutil.rmtree(gone)
    (kept / "spec.json").touch()  # only status.json marks a change
    again = sync_index(results)
    assert again.indexed == () and again.removed == ("run-c",)
    # every run at once counts what one run's query counts
    assert {r.id: (r.cases, r.samples) for r in list_runs(db)} == {
        "run-a": (get_run(db, "run-a").cases, get_run(db, "run-a").samples),
        "run-b": (get_run(db, "run-b").cases, get_run(db, "run-b").samples),
    }


def test_query_by_case_and_job_parameters(results: Path) -> None:
    db = default_index_path(results)
    index_run(
        db, make_run(results, "run-a", CELLS, warmup={("nvme", "latency"): {"read_iops": [1.0]}})
    )
    nvme = query_metrics(db, metric="read_iops", params={"disks.0.model": "nvme"})
    assert sorted(r.value for r in nvme) == [190.0, 200.0, 210.0, 900.0, 950.0]
    latency_nvme = query_metrics(
        db, metric="read_iops", params={"disks.0.model": "nvme", "rw": "randrw", "direct": "1"}
    )
    assert len(latency_nvme) == 5
    with_warmup = query_metrics(
        db, metric="read_iops", params={"disks.0.model": "nvme"}, include_warmup=True
    )
    assert 1.0 in [r.value for r in with_warmup]
    assert query_metrics(db, metric="read_iops", params={"disks.0.model": "scsi"}) == []


def test_scan_skips_warmup_in_cells_and_kept_failed_attempts(results: Path) -> None:
    run = make_run(results, "run-a", CELLS, warmup={("nvme", "latency"): {"read_iops": [1e9]}})
    old = run / "cases" / "nvme.failed-1700000000"
    (old / "jobs/latency/r1").mkdir(parents=True)
    (old / "jobs/latency/r1/summary.json").write_text(json.dumps({"metrics": {"read_iops": 5.0}}))
    rec = scan_run(run)
    assert [c.case_id for c in rec.cases] == ["virtio-blk", "nvme"]
    assert rec.cells()[("nvme", "latency")]["read_iops"] == [200.0, 210.0, 190.0]
    assert rec.jobs() == ["latency", "throughput"]


def test_resolve_run_by_id_or_path(results: Path, tmp_path: Path) -> None:
    run = make_run(results, "20240601-120000-lab", CELLS)
    assert resolve_run(results, "20240601-120000-lab") == run
    assert resolve_run(tmp_path / "elsewhere", str(run)) == run
    with pytest.raises(ResultError) as info:
        resolve_run(results, "lab")
    assert info.value.hint and "20240601-120000-lab" in info.value.hint


def test_cli_list_show_rm_reindex(results: Path) -> None:
    make_run(results, "run-a", CELLS, host="hv1")
    make_run(results, "run-b", CELLS)
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--results", str(results)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "run-a" in listed.output and "run-b" in listed.output and "hv1" in listed.output
    shown = runner.invoke(app, ["show", "run-a", "--results", str(results)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "virtio-blk" in shown.output and "latency" in shown.output
    assert "105 ± " in shown.output  # mean read IOPS of virtio-blk/latency with its interval
    refused = runner.invoke(app, ["rm", "run-b", "--results", str(results)], input="n\n")
    assert refused.exit_code != 0
    assert (results / "run-b").is_dir()
    removed = runner.invoke(app, ["rm", "run-b", "--yes", "--results", str(results)])
    assert removed.exit_code == 0, removed.output
    assert not (results / "run-b").exists()
    rebuilt = runner.invoke(app, ["reindex", "--results", str(results)])
    assert rebuilt.exit_code == 0 and "indexed 1 runs" in rebuilt.output
    missing = runner.invoke(app, ["show", "nope", "--results", str(results)])
    assert isinstance(missing.exception, ResultError)


def test_cli_list_does_not_create_a_results_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = CliRunner().invoke(app, ["list", "--results", str(missing)])
    assert done.exit_code == 0 and "does not exist" in done.output
    assert not missing.exists()


def test_a_fleet_run_lists_its_hosts(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fleet", {("hv-a_default", "j"): {"read_iops": [1.0]}})
    (run / "fleet.json").write_text(
        json.dumps({"hosts": [{"host": "hv-a", "status": "ok"}, {"host": "hv-b"}]})
    )
    assert scan_run(run).host == "hv-a,hv-b"
    assert scan_run(make_run(tmp_path, "one", {}, host="lab1")).host == "lab1"


def test_a_run_whose_index_cannot_be_written_is_kept_and_says_how_to_mend_it(
    results: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a bench, fleet or nested run: the directory is the truth, the index only warns."""
    from vmlab.results.index import index_run_in

    run = make_run(results, "run-a", CELLS)
    default_index_path(results).mkdir()  # where the SQLite file should be: a folder
    index_run_in(results, run)
    assert "vmlab results reindex" in caplog.text
    assert (run / "status.json").is_file()
