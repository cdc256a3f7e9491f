"""Sweep charts of the report: a metric against the numeric parameter that varies, one line
per other varying parameter (or run), heat-maps for two parameters; from the real fio-plot
corpora (tests/data/fio) and from synthetic runs with repetitions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from runs_fixture import make_run, normal

from vmlab.report.compare import compare_runs
from vmlab.report.model import build_report
from vmlab.report.render import render_html, render_markdown, run_charts
from vmlab.report.sweep import param_number, sweeps
from vmlab.results.importer import import_tree
from vmlab.results.rundir import RunRecord, scan_run

DATA = Path(__file__).resolve().parents[1] / "data" / "fio"
DEPTHS = ["1", "2", "4", "8", "16", "32", "64"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunRecord, RunRecord]:
    root = tmp_path_factory.mktemp("sweep") / "results"
    raid = import_tree(DATA / "fio-3.1-raid-ssd", root).runs[0].path
    ssd = import_tree(DATA / "fio-2.18-ssd", root).runs[0].path
    return scan_run(Path(raid)), scan_run(Path(ssd))


def test_param_numbers() -> None:
    assert param_number("bs", "4k") == 4096
    assert param_number("bs", "1MiB") == 1024**2
    assert param_number("iodepth", "01") == 1
    assert param_number("iodepth", "deep") is None
    assert param_number("iodepth", "inf") is None


def test_queue_depth_by_numjobs_sweep_of_the_raid_corpus(
    corpora: tuple[RunRecord, RunRecord],
) -> None:
    """98 files, iodepth x numjobs, randread and randwrite: one sweep per workload and
    direction, IOPS and clat mean / p99 against iodepth, one line per numjobs, 7 points each."""
    raid, _ = corpora
    found = sweeps(build_report([raid]))
    assert [(s.title, s.x_param, s.lines_by) for s in found] == [
        ("randread", "iodepth", ("numjobs",)),
        ("randwrite", "iodepth", ("numjobs",)),
    ]
    read = found[0]
    iops, mean, p99 = read.charts
    assert [line.label for line in iops.lines] == [f"numjobs={n}" for n in DEPTHS]
    assert all(len(line.dots) == 7 for line in iops.lines)
    assert [t.label for t in iops.x_ticks] == DEPTHS
    assert iops.x_label == "iodepth, log scale"
    assert iops.y_label == "read IOPS"
    assert len(iops.y_ticks) >= 3 and iops.y_ticks[0].label == "0"
    assert mean.y_label.startswith("read clat mean")  # completion latency, as the p99
    assert p99.y_label.startswith("read clat p99")
    # higher on the chart is more IOPS: qd64 nj1 (47.1k) sits above qd1 nj1 (6.61k)
    nj1 = iops.lines[0].dots
    assert nj1[-1].y < nj1[0].y
    assert "6.61k" in nj1[0].title and "iodepth=1" in nj1[0].title
    # no repetitions in the corpus: no whiskers
    assert all(d.whisker is None for line in iops.lines for d in line.dots)
    # iodepth x numjobs: a heat-map of IOPS and one of the mean latency, a value in each cell
    heat_iops, heat_lat = read.heatmaps
    assert len(heat_iops.cells) == 49
    assert [t.label for t in heat_iops.x_ticks] == DEPTHS
    assert [t.label for t in heat_iops.y_ticks] == DEPTHS
    assert (heat_iops.x_label, heat_iops.y_label) == ("iodepth", "numjobs")
    by_title = {c.title.split(":")[0]: c.text for c in heat_iops.cells}
    assert by_title["iodepth=1, numjobs=1"] == "6.61k"
    assert "clat" in heat_lat.title
    # read and write never share a chart
    assert all("write" not in c.y_label for c in read.charts)
    # the same numbers as a table, in Markdown: a row per iodepth, a column per numjobs
    text = render_markdown(build_report([raid]))
    assert "| iodepth | numjobs=1 | numjobs=2 |" in text
    assert "| 1 | 6.61k | 12.9k |" in text


def test_bars_and_table_keep_read_and_write_apart(corpora: tuple[RunRecord, RunRecord]) -> None:
    raid, _ = corpora
    report = build_report([raid])
    charts = run_charts(report.runs[0])
    assert charts.bars
    assert all(len({bar.series for bar in chart.bars}) == 1 for chart in charts.bars)
    assert {chart.axis_label for chart in charts.bars} >= {"read IOPS", "write IOPS"}
    rows = charts.rows
    assert {r.direction for r in rows} == {"read", "write"}
    qd1 = next(r for r in rows if r.job == "randread-qd1-nj1")
    assert (qd1.clat_mean, qd1.clat_p99, qd1.lat_mean) == ("136 µs", "142 µs", "148 µs")


def test_html_draws_sweeps_with_labelled_axes_and_heat_values(
    corpora: tuple[RunRecord, RunRecord],
) -> None:
    raid, _ = corpora
    html = render_html(build_report([raid]))
    sweep_svgs = re.findall(r'<svg class="sweep".*?</svg>', html, flags=re.DOTALL)
    assert len(sweep_svgs) == 6  # 2 workloads x (IOPS, mean, p99)
    for svg in sweep_svgs:
        assert re.search(r'<text class="axis-title x"[^>]*>iodepth, log scale</text>', svg)
        assert re.search(r'<text class="axis-title y"[^>]*>(read|write) \w', svg)
        assert svg.count('<polyline class="sweep-line"') == 7
    assert html.count('<rect class="heat-cell"') == 4 * 49
    assert ">6.61k</text>" in html
    # the 98 per-job bars are still there, folded: the sweeps show the same numbers
    assert '<details class="bars">' in html
    assert "<th>clat mean</th><th>clat p99</th><th>total lat mean (slat + clat)</th>" in html
    assert "https://" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_imported_cases_show_the_jobs_own_fio_options(
    corpora: tuple[RunRecord, RunRecord],
) -> None:
    raid, _ = corpora
    case = build_report([raid]).runs[0].cases[0]
    assert case.command_kind == "fio"
    assert case.command is not None
    section = case.command.split("\n\n")[0]
    assert section.splitlines()[0] == "[randread-qd1-nj1]"
    assert "filename=/dev/sdb" in section.splitlines()
    assert "runtime=60" in section.splitlines()
    assert case.command.count("\n[") == 97
    assert "fio options of each job (imported)" in render_html(build_report([raid]))
    assert "fio options of each job (imported)" in render_markdown(build_report([raid]))


def test_two_runs_share_the_sweep_and_get_a_comparison(
    corpora: tuple[RunRecord, RunRecord],
) -> None:
    raid, ssd = corpora
    comparison = compare_runs(raid, [ssd])
    report = build_report([raid, ssd], comparison=comparison)
    read = sweeps(report)[0]
    assert read.lines_by == ("run", "numjobs")
    labels = [line.label for line in read.charts[0].lines]
    assert labels[0] == "fio-3.1-raid-ssd, numjobs=1"
    assert "fio-2.18-ssd, numjobs=1" in labels
    ssd_line = next(line for line in read.charts[0].lines if line.label.startswith("fio-2.18"))
    assert len(ssd_line.dots) == 8  # iodepth 1..128
    # heat-map only where both parameters vary: the raid run, not the one-numjobs ssd run
    assert all("fio-3.1-raid-ssd" in h.title for h in read.heatmaps)
    assert report.comparisons and report.matched_on_params == [ssd.id]
    assert f"{ssd.id}: fio-2.18-ssd/randread-qd128" in report.unmatched
    html = render_html(report)
    assert '<section id="comparison">' in html
    assert "randread-qd1 = randread-qd1-nj1" in html
    assert "cells have no partner" in html
    assert "cells have no partner" in render_markdown(report)


def test_repetitions_give_whiskers_and_a_case_parameter_can_be_the_x_axis(
    tmp_path: Path,
) -> None:
    """A native run of three cases that differ in num_queues, three repetitions each: one
    line (the job), a whisker at every point, the axis named after the case parameter."""
    cells = {
        (f"q{q}", "randread"): {
            "read_iops": normal(1000.0 * q, 50.0, 3, seed=q),
            "read_clat_mean_ns": normal(50_000.0 / q, 500.0, 3, seed=10 + q),
            "read_lat_mean_ns": normal(55_000.0 / q, 500.0, 3, seed=20 + q),
            "read_lat_p99_ns": normal(90_000.0 / q, 900.0, 3, seed=30 + q),
        }
        for q in (1, 2, 4)
    }
    params = {f"q{q}": {"disks.0.model": "virtio-blk", "num_queues": str(q)} for q in (1, 2, 4)}
    run = scan_run(make_run(tmp_path, "queues", cells, case_params=params))
    (found,) = sweeps(build_report([run]))
    assert found.x_param == "num_queues" and found.lines_by == ()
    iops = found.charts[0]
    (line,) = iops.lines
    assert line.label == "all"
    assert all(d.whisker is not None for d in line.dots)
    low, high = line.dots[0].whisker  # type: ignore[misc]
    assert low > line.dots[0].y > high  # SVG y grows downwards: the CI straddles the mean
    assert [t.label for t in iops.x_ticks] == ["1", "2", "4"]
    assert iops.x_label == "num_queues"  # 1..4: a linear axis
    assert found.charts[1].y_label.startswith("read clat mean")
    assert not found.heatmaps  # one parameter varies


def test_a_comparison_that_pairs_nothing_says_so(tmp_path: Path) -> None:
    """Two configurations a side, none in common: the same fio parameters do not pair cells
    of different configurations, and the report says that nothing paired."""
    cell = {"read_iops": [1.0, 2.0]}
    a = scan_run(make_run(tmp_path, "a", {("nvme", "x"): cell, ("virtio", "x"): cell}))
    b = scan_run(make_run(tmp_path, "b", {("scsi", "x"): cell, ("ide", "x"): cell}))
    report = build_report([a, b], comparison=compare_runs(a, [b]))
    assert not report.comparisons
    assert "No cell pairs with one of a" in render_html(report)
    assert "No cell pairs with one of a" in render_markdown(report)
    assert "a: nvme/x" in report.unmatched


def test_cli_report_of_two_imports_says_what_paired(
    corpora: tuple[RunRecord, RunRecord], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from vmlab.cli.report import app

    raid, ssd = corpora
    out = tmp_path / "out"
    shown = CliRunner().invoke(
        app,
        ["report", str(raid.path), str(ssd.path), "--out", str(out), "--format", "html"],
        env={"COLUMNS": "200"},
    )
    assert shown.exit_code == 0, shown.output
    assert "14 cells paired, 86 without a partner" in shown.output
    assert '<section id="comparison">' in (out / "report.html").read_text()


def test_block_size_sweep_reads_sizes(tmp_path: Path) -> None:
    """bs 4k..1M as the x axis: sizes as numbers (log axis), ticks as people write them."""
    cells = {
        ("disk", f"seq-{bs}"): {"read_iops": [1e6 / n, 1.1e6 / n]}
        for bs, n in (("4k", 4), ("64k", 64), ("1m", 1024))
    }
    run = make_run(tmp_path, "bs", cells)
    spec = json.loads((run / "spec.json").read_text())
    for job, bs in zip(spec["jobs"], ("4k", "64k", "1m"), strict=True):
        job.update(rw="read", bs=bs)
    (run / "spec.json").write_text(json.dumps(spec))
    (found,) = sweeps(build_report([scan_run(run)]))
    assert (found.title, found.x_param) == ("read", "bs")
    iops = found.charts[0]
    assert [t.label for t in iops.x_ticks] == ["4k", "64k", "1M"]
    assert iops.x_label == "bs (bytes), log scale"
    assert iops.lines[0].values["4k"].startswith("262k ±")


def test_bar_value_text_gets_the_room_it_needs() -> None:
    from vmlab.report.charts import CHAR_WIDTH_PX, BarInput, bar_chart

    short = bar_chart("t", "IOPS", [BarInput("g", "read", 1000.0)])
    note = "0.83× limit, noisy, a fleet host's long note"
    long = bar_chart("t", "IOPS", [BarInput("g", "read", 1000.0, 900.0, 1100.0, note=note)])
    assert short is not None and long is not None
    assert short.plot_width == 1000 - 200 - 300
    (bar,) = long.bars
    assert long.plot_width < short.plot_width
    assert long.left + long.plot_width + 6 + CHAR_WIDTH_PX * len(bar.text) <= long.width


def test_a_lab_with_a_host_baseline_gets_a_line_per_configuration(tmp_path: Path) -> None:
    """The default lab's shape: jobs latency (iodepth 1) and throughput (iodepth 64), cases
    that differ in their model, and the host baseline (params host=baseline, no model)."""
    cells = {
        (case, job): {"read_iops": [iops * k, iops * k * 1.05]}
        for case, k in (("host-baseline", 3.0), ("virtio-blk", 1.0), ("nvme", 1.5))
        for job, iops in (("latency", 4000.0), ("throughput", 9000.0))
    }
    params = {
        "host-baseline": {"host": "baseline"},
        "virtio-blk": {"disks.0.model": "virtio-blk"},
        "nvme": {"disks.0.model": "nvme"},
    }
    run = make_run(tmp_path, "lab", cells, case_params=params)
    spec = json.loads((run / "spec.json").read_text())
    for job in spec["jobs"]:
        job["iodepth"] = 1 if job["name"] == "latency" else 64
    (run / "spec.json").write_text(json.dumps(spec))
    (found,) = sweeps(build_report([scan_run(run)]))
    assert found.x_param == "iodepth"
    labels = [line.label for line in found.charts[0].lines]
    assert sorted(labels) == ["disks.0.model=nvme", "disks.0.model=virtio-blk", "host=baseline"]
    assert all(len(line.dots) == 2 for line in found.charts[0].lines)


def test_lines_beyond_the_limit_are_named_not_dropped_silently(tmp_path: Path) -> None:
    """18 numjobs values against iodepth: the chart draws 16 lines and says which 2 it left out."""
    from vmlab.report.sweep import MAX_SERIES

    shape = [(qd, nj) for nj in range(1, 19) for qd in (1, 2)]
    cells = {("disk", f"r-qd{qd}-nj{nj}"): {"read_iops": [1000.0 * nj + qd]} for qd, nj in shape}
    run = make_run(tmp_path, "many", cells)
    spec = json.loads((run / "spec.json").read_text())
    for job, (qd, nj) in zip(spec["jobs"], shape, strict=True):
        job.update(rw="randread", iodepth=qd, numjobs=nj)
    (run / "spec.json").write_text(json.dumps(spec))
    report = build_report([scan_run(run)])
    (found,) = sweeps(report)
    iops = found.charts[0]
    assert found.x_param == "iodepth"
    assert len(iops.lines) == MAX_SERIES
    assert len(iops.left_out) == 18 - MAX_SERIES
    assert "2 more lines not drawn" in render_html(report)
    assert "2 more lines left out" in render_markdown(report)
