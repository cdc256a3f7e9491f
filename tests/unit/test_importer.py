"""Import of foreign fio JSON trees (fio-plot layouts, fio 2.x/3.x, client/server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmlab.cli.report import app
from vmlab.errors import ResultError
from vmlab.results.importer import ImportResult, import_tree, infer_params, job_name, read_units
from vmlab.results.index import default_index_path, list_runs
from vmlab.results.rundir import read_raw, read_summary, scan_run

DATA = Path(__file__).resolve().parents[1] / "data" / "fio"
FIO_218 = DATA / "fio-2.18-ssd"
FIO_31 = DATA / "fio-3.1-raid-ssd"
FIO_333 = DATA / "fio-3.33"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImportResult]:
    results = tmp_path_factory.mktemp("import") / "results"
    return results, import_tree(DATA, results)


def _run_for(imported: tuple[Path, ImportResult], folder: Path) -> Path:
    _, result = imported
    for run in result.runs:
        if run.folder == folder.resolve():
            return Path(run.path)
    raise AssertionError(f"no run for {folder}")


def _summary(run: Path, case: str, job: str, rep: int = 1) -> dict[str, float]:
    return dict(read_summary(run / "cases" / case / "jobs" / job / f"r{rep}")["metrics"])


def test_one_run_per_folder_named_after_it(imported: tuple[Path, ImportResult]) -> None:
    results, result = imported
    runs = result.runs
    assert sorted(r.folder.name for r in runs) == ["fio-2.18-ssd", "fio-3.1-raid-ssd", "fio-3.33"]
    for run in runs:
        rec = scan_run(run.path)
        assert [c.case_id for c in rec.cases] == [run.folder.name]
        assert rec.source == "import"
        assert rec.status == "complete"
    by_folder = {r.folder.name: r for r in runs}
    assert by_folder["fio-2.18-ssd"].jobs == 16
    assert by_folder["fio-3.1-raid-ssd"].jobs == 98
    indexed = list_runs(default_index_path(results))
    assert sorted(r.id for r in indexed) == sorted(r.run_id for r in runs)
    assert {r.source for r in indexed} == {"import"}


def test_unusable_files_are_listed_with_a_reason(imported: tuple[Path, ImportResult]) -> None:
    _, result = imported
    reasons = {r.path.name: r.reason for r in result.rejected}
    assert reasons == {"error-einval.txt": "fio job 'e' failed with error 22 (EINVAL)"}
    assert result.ignored == 1  # README.md


def test_numbers_match_the_files_by_hand(imported: tuple[Path, ImportResult]) -> None:
    # fio 2.18, latencies in microseconds
    run = _run_for(imported, FIO_218)
    raw = json.loads((FIO_218 / "randread-16.json").read_text())["jobs"][0]["read"]
    got = _summary(run, "fio-2.18-ssd", "randread-qd16")
    assert got["read_iops"] == pytest.approx(363.460802)
    assert raw["iops"] == pytest.approx(363.460802)
    assert got["read_bw_kib_s"] == pytest.approx(raw["bw"])
    assert got["read_lat_p99_ns"] == pytest.approx(230400 * 1000)  # clat percentile 99, µs
    assert got["read_lat_p99_ns"] == pytest.approx(raw["clat"]["percentile"]["99.000000"] * 1000)
    assert got["read_lat_mean_ns"] == pytest.approx(raw["lat"]["mean"] * 1000)
    assert "write_iops" not in got
    # fio 3.1, nanoseconds, fio-plot name <rw>-<iodepth>-<numjobs>
    run = _run_for(imported, FIO_31)
    raw = json.loads((FIO_31 / "randread-16-4.json").read_text())["jobs"][0]["read"]
    got = _summary(run, "fio-3.1-raid-ssd", "randread-qd16-nj4")
    assert got["read_iops"] == pytest.approx(46616.296123)
    assert got["read_lat_p99_ns"] == pytest.approx(1630208)
    assert got["read_lat_mean_ns"] == pytest.approx(1370316.046796)  # lat_ns (total) mean
    assert got["read_lat_mean_ns"] == pytest.approx(raw["lat_ns"]["mean"])


def test_each_fio_plot_file_lands_in_the_job_its_name_says(
    imported: tuple[Path, ImportResult],
) -> None:
    run = _run_for(imported, FIO_31)
    summaries = json.loads((run / "cases" / "fio-3.1-raid-ssd" / "summaries.json").read_text())
    assert summaries
    for key, summary in summaries.items():
        rw, depth, numjobs = Path(summary["source"]["path"]).stem.split("-")
        assert key == f"{rw}-qd{depth}-nj{numjobs}/r1"


def test_raw_files_are_copied_byte_for_byte(
    imported: tuple[Path, ImportResult], tmp_path: Path
) -> None:
    run = _run_for(imported, FIO_218)
    case = run / "cases" / "fio-2.18-ssd"
    original = (FIO_218 / "randwrite-128.json").read_bytes()
    assert read_raw(case / "jobs" / "randwrite-qd128" / "r1") == original
    # packed: two files for the case, no folder per repetition; `tar -xf raw.tar` in the
    # case folder puts each raw file where an unpacked case has it
    assert sorted(p.name for p in case.iterdir()) == [
        "case.json",
        "raw.tar",
        "status.json",
        "summaries.json",
    ]
    shutil.copytree(case, tmp_path / "case")
    subprocess.run(["tar", "-xf", "raw.tar"], cwd=tmp_path / "case", check=True)
    extracted = sorted((tmp_path / "case").glob("jobs/*/r*/fio.json"))
    assert len(extracted) == len(json.loads((case / "summaries.json").read_text())) == 16
    unpacked = tmp_path / "case" / "jobs" / "randwrite-qd128" / "r1" / "fio.json"
    assert unpacked.read_bytes() == original
    meta = json.loads((run / "import.json").read_text())
    assert len(meta["files"]) == 16 and all(len(f["sha256"]) == 64 for f in meta["files"])
    assert json.loads((run / "spec.json").read_text())["source"] == "import"
    assert json.loads((run / "status.json").read_text())["source"] == "import"


def test_an_unpacked_import_reads_as_the_packed_one(
    imported: tuple[Path, ImportResult], tmp_path: Path
) -> None:
    """Unpacking a case by hand (tar -xf, and summaries.json split into summary.json files)
    changes nothing a reader sees: scan_run gives the same samples, metrics and order."""
    run = _run_for(imported, FIO_218)
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    case = copy / "cases" / "fio-2.18-ssd"
    subprocess.run(["tar", "-xf", "raw.tar"], cwd=case, check=True)
    for key, summary in json.loads((case / "summaries.json").read_text()).items():
        (case / "jobs" / key / "summary.json").write_text(json.dumps(summary))
    (case / "raw.tar").unlink()
    (case / "summaries.json").unlink()
    packed, unpacked = scan_run(run), scan_run(copy)
    assert [(s.job, s.repetition, dict(s.metrics)) for s in packed.samples] == [
        (s.job, s.repetition, dict(s.metrics)) for s in unpacked.samples
    ]
    assert [s.path.relative_to(run) for s in packed.samples] == [
        s.path.relative_to(copy) for s in unpacked.samples
    ]


def test_constant_options_become_case_parameters(imported: tuple[Path, ImportResult]) -> None:
    rec = scan_run(_run_for(imported, FIO_218))
    assert dict(rec.cases[0].params) == {
        "bs": "4k",
        "numjobs": "1",
        "ioengine": "libaio",
        "direct": "1",
        "size": "1861g",
    }
    assert dict(rec.job_params["randread-qd1"])["iodepth"] == "1"  # fio printed "01"


def test_client_server_and_numjobs(imported: tuple[Path, ImportResult]) -> None:
    rec = scan_run(_run_for(imported, FIO_333))
    jobs = rec.jobs()
    assert "randrw-mix90-qd1-nj1-libaio-127.0.0.1-18765" in jobs
    assert "randrw-mix90-qd1-nj1-libaio-127.0.0.1-18766" in jobs
    assert "randrw-mix90-qd1-nj1-libaio-all-clients" in jobs
    # numjobs=2 without group_reporting: the two clones are summed into one job
    clones = json.loads((FIO_333 / "randrw-numjobs2.json").read_text())["jobs"]
    units, _ = read_units(FIO_333 / "randrw-numjobs2.json")
    assert len(units) == 1
    expected = sum(j["read"]["iops"] for j in clones)
    assert units[0].job.read is not None
    assert units[0].job.read.iops == pytest.approx(expected)


def test_same_parameters_in_several_files_are_repetitions(tmp_path: Path) -> None:
    tree = tmp_path / "tree" / "ssd"
    tree.mkdir(parents=True)
    for i in (1, 2, 3):
        shutil.copy(FIO_31 / "randread-16-4.json", tree / f"run{i}.json")
    shutil.copy(FIO_31 / "randread-1-1.json", tree / "other.json")
    result = import_tree(tmp_path / "tree", tmp_path / "results")
    (run,) = result.runs
    rec = scan_run(run.path)
    cells = rec.cells()
    assert len(cells[("ssd", "randread-qd16-nj4")]["read_iops"]) == 3
    assert len(cells[("ssd", "randread-qd1-nj1")]["read_iops"]) == 1


def test_every_bad_file_is_listed_and_the_good_ones_imported(tmp_path: Path) -> None:
    tree = tmp_path / "mixed"
    tree.mkdir()
    good = (FIO_333 / "randread.json").read_text()
    (tree / "good.json").write_text(good)
    (tree / "noise.txt").write_text("fio: this is not json at all\n")
    (tree / "cut.json").write_text(good[: len(good) // 2])
    (tree / "nojobs.json").write_text(json.dumps({"fio version": "fio-3.33", "jobs": []}))
    (tree / "other.json").write_text(json.dumps({"hello": "world"}))
    (tree / "bw.log").write_text("0, 1, 0, 4096\n")
    result = import_tree(tree, tmp_path / "results")
    assert len(result.runs) == 1
    reasons = {r.path.name: r.reason for r in result.rejected}
    assert set(reasons) == {"noise.txt", "cut.json", "nojobs.json", "other.json"}
    assert "no JSON object" in reasons["noise.txt"]
    assert "incomplete" in reasons["cut.json"]
    assert "no jobs" in reasons["nojobs.json"]
    assert "no fio report" in reasons["other.json"]
    assert result.ignored == 1


def test_params_and_names() -> None:
    units, _ = read_units(FIO_333 / "two-jobs-global.json")
    params = [u.params for u in units]
    assert params[0]["rw"] == "randread" and params[0]["iodepth"] == "1"
    assert params[1]["rw"] == "randwrite" and params[1]["iodepth"] == "4"  # job overrides global
    assert job_name(
        {"rw": "randread", "iodepth": "16", "numjobs": "4"}, ["iodepth", "numjobs"]
    ) == ("randread-qd16-nj4")
    assert infer_params(units[0].job)["size"] == "8m"


def test_cli_import_with_a_name(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runner = CliRunner()
    done = runner.invoke(
        app, ["import", str(FIO_218), "--name", "ssd-2017", "--results", str(results)]
    )
    assert done.exit_code == 0, done.output
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    assert run.name.endswith("-ssd-2017")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    failed = runner.invoke(app, ["import", str(empty), "--results", str(results)])
    assert isinstance(failed.exception, ResultError)
    assert "notes.txt" in failed.output


def test_mean_and_p99_columns_are_the_same_latency_kind(
    imported: tuple[Path, ImportResult],
) -> None:
    """fio-3.1 randread-qd1-nj1: lat mean 147.8 µs, clat mean 135.6 µs, clat p99 142.3 µs. The
    table's mean comes from clat, as its p99 does, so the mean no longer exceeds the p99."""
    from vmlab.report.table import row_values

    run = _run_for(imported, FIO_31)
    got = _summary(run, "fio-3.1-raid-ssd", "randread-qd1-nj1")
    raw = json.loads((FIO_31 / "randread-1-1.json").read_text())["jobs"][0]["read"]
    assert got["read_clat_mean_ns"] == pytest.approx(raw["clat_ns"]["mean"])
    assert got["read_lat_mean_ns"] == pytest.approx(raw["lat_ns"]["mean"])  # still offered
    _, mean_us, p99_us = row_values(got)
    assert mean_us == pytest.approx(raw["clat_ns"]["mean"] / 1000)
    assert p99_us is not None and mean_us is not None and mean_us < p99_us


def test_the_indexed_record_is_what_the_directory_says(tmp_path: Path) -> None:
    """import_tree indexes the record it built while writing; it must be what scan_run reads
    back from the run directory (the truth)."""
    from vmlab.results.importer import group_folder, read_units, write_import_record
    from vmlab.results.rundir import scan_run

    units = [u for f in sorted(FIO_31.glob("*.json"))[:12] for u in read_units(f)[0]]
    units += [u for u in read_units(FIO_31 / "randread-16-4.json")[0]]  # a repetition
    case = group_folder(units, "raid", FIO_31)
    run, record = write_import_record(tmp_path, [case], name="raid", source=FIO_31)
    assert any(s.repetition == 2 for s in record.samples)
    assert record == scan_run(run.path)


def test_the_indexed_record_keeps_the_directory_order_when_a_job_name_prefixes_another(
    tmp_path: Path,
) -> None:
    """Job names that collide get -2, -3...: "seq" and "seq-2" sort as path parts do ("seq"
    first), which is the order scan_run reads them in; a plain string sort puts "seq-2"
    first ('-' < '/')."""
    from dataclasses import replace

    from vmlab.results.importer import group_folder, read_units, write_import_record
    from vmlab.results.rundir import scan_run

    units = [u for f in sorted(FIO_31.glob("*.json"))[:2] for u in read_units(f)[0]]
    case = group_folder(units, "raid", FIO_31)
    first, second = case.jobs[:2]
    case = replace(case, jobs=(replace(first, name="seq"), replace(second, name="seq-2")))
    run, record = write_import_record(tmp_path, [case], name="raid", source=FIO_31)
    assert [s.job for s in record.samples] == ["seq", "seq-2"]
    assert record == scan_run(run.path)


def _index_rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the index, the run ids replaced by their run's name (a run id holds the
    second it was made in)."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        names = dict(conn.execute("SELECT id, name FROM runs"))
        tables = {
            "runs": "SELECT id, name, status, source, cases, samples FROM runs",
            "cases": "SELECT run, case_id, status, params FROM cases",
            "parameters": "SELECT * FROM parameters",
            "metrics": "SELECT * FROM metrics",
        }
        return {
            table: sorted((names[row[0]], *row[1:]) for row in conn.execute(sql))
            for table, sql in tables.items()
        }
    finally:
        conn.close()


def test_an_import_in_worker_processes_is_the_import_in_one(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(DATA, tree)
    (tree / "fio-3.33" / "broken.json").write_text("{")
    assert threading.active_count() == 1  # else the import would not fork its workers
    serial = import_tree(tree, tmp_path / "serial", workers=1)
    pooled = import_tree(tree, tmp_path / "pooled", workers=3)
    assert [r.folder for r in pooled.runs] == [r.folder for r in serial.runs]
    assert [(r.jobs, r.files) for r in pooled.runs] == [(r.jobs, r.files) for r in serial.runs]
    assert pooled.rejected == serial.rejected
    assert "broken.json" in {r.path.name for r in serial.rejected}
    rows = _index_rows(default_index_path(tmp_path / "pooled"))
    assert rows == _index_rows(default_index_path(tmp_path / "serial"))
    assert len(rows["runs"]) == 3 and len(rows["metrics"]) > 1000


def test_an_interrupted_import_keeps_the_runs_it_indexed_and_leaves_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    import vmlab.results.importer as importer

    indexed: list[str] = []
    real = importer.index_record

    def index_then_interrupt(conn: object, record: object) -> None:
        if indexed:
            raise KeyboardInterrupt
        real(conn, record)  # type: ignore[arg-type]
        indexed.append(record.id)  # type: ignore[attr-defined]

    monkeypatch.setattr(importer, "index_record", index_then_interrupt)
    assert threading.active_count() == 1  # else the import would not fork its workers
    with pytest.raises(KeyboardInterrupt):
        import_tree(DATA, tmp_path / "results", workers=2)
    assert multiprocessing.active_children() == []
    assert [r.id for r in list_runs(default_index_path(tmp_path / "results"))] == indexed


def test_a_report_reads_each_imported_unit_again_from_its_raw_file(
    imported: tuple[Path, ImportResult],
) -> None:
    """summaries.json keeps no parsed report; the report's percentiles and options come from
    the raw file, as the unit it was imported as: numjobs clones summed, one fio server's
    job, or the "All clients" sum."""
    from vmlab.report.model import _read_fio

    for folder in (FIO_333, FIO_31):
        rec = scan_run(_run_for(imported, folder))
        expected = {}
        for path in sorted(folder.iterdir()):
            try:
                units, _ = read_units(path.resolve())
            except ResultError:
                continue
            for u in units:
                key = (str(u.path), u.job.name, u.job.hostname, u.job.port)
                expected[key] = u.fio.model_copy(update={"jobs": [u.job], "all_clients": None})
        hosts = set()
        for sample in rec.samples:
            source = read_summary(sample.path)["source"]
            assert "fio" not in read_summary(sample.path)
            key = (source["path"], source["fio_job"], source["hostname"], source["port"])
            assert _read_fio(sample, "test") == expected[key]
            hosts.add(source["hostname"])
        if folder == FIO_333:
            assert "all-clients" in hosts and len(hosts) >= 3
    assert len(expected) > 50
