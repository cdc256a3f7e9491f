"""Report model and writers: numbers, host-baseline fractions, curves, escaping, formats."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from runs_fixture import FIO_333, lab_run, make_run
from typer.testing import CliRunner

from vmlab.cli.report import app
from vmlab.metrics import limit_cases
from vmlab.report.charts import BarInput, bar_chart, human, human_pm, nice_step, nines
from vmlab.report.compare import compare_runs
from vmlab.report.model import Report, build_report
from vmlab.report.render import (
    csv_cell,
    md_escape,
    md_fence,
    render_csv,
    render_html,
    render_json,
    render_junit,
    render_markdown,
    write_report,
)
from vmlab.results.rundir import read_summary, scan_run

EVIL = "<script>alert(1)</script>|`x`"


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return lab_run(tmp_path / "results", evil=EVIL)


def test_each_fleet_host_is_measured_against_its_own_host_baseline(tmp_path: Path) -> None:
    assert limit_cases(["host-baseline", "virtio-blk"]) == {
        "host-baseline": "host-baseline",
        "virtio-blk": "host-baseline",
    }
    iops = {
        ("hv-a_host-baseline", "j"): {"read_iops": [1000.0, 1000.0]},
        ("hv-a_default", "j"): {"read_iops": [500.0, 500.0]},
        ("hv-b_host-baseline", "j"): {"read_iops": [4000.0, 4000.0]},
        ("hv-b_default", "j"): {"read_iops": [1000.0, 1000.0]},
        ("hv-c_default", "j"): {"read_iops": [10.0, 10.0]},  # ran no baseline
    }
    (run,) = build_report([scan_run(make_run(tmp_path, "fleet", iops))]).runs
    of_limit = {
        c.id: c.job("j").metrics["read_iops"].of_limit  # type: ignore[union-attr]
        for c in run.cases
    }
    assert of_limit["hv-a_default"] == pytest.approx(0.5)
    assert of_limit["hv-b_default"] == pytest.approx(0.25)  # hv-b's own, not hv-a's
    assert of_limit["hv-c_default"] is None
    assert {c.id for c in run.cases if c.is_limit} == {"hv-a_host-baseline", "hv-b_host-baseline"}


def test_means_fractions_and_warmup(lab: Path) -> None:
    rec = scan_run(lab)
    report = build_report([rec])
    (run,) = report.runs
    assert run.limit_case == "host-baseline"
    host = next(c for c in run.cases if c.id == "host-baseline")
    guest = next(c for c in run.cases if c.id == "virtio-blk")
    assert host.is_limit and not guest.is_limit
    job = guest.job("randrw-mix90")
    assert job is not None and job.warmup and job.repetitions == 2
    # mean of r1, r2 read IOPS, by hand from the summaries; r0 (x1000) is excluded
    reps = [read_summary(lab / f"cases/virtio-blk/jobs/randrw-mix90/r{i}") for i in (1, 2)]
    expected = sum(r["metrics"]["read_iops"] for r in reps) / 2
    assert job.metrics["read_iops"].stat.mean == pytest.approx(expected)
    host_job = host.job("randrw-mix90")
    assert host_job is not None
    fraction = job.metrics["read_iops"].of_limit
    assert fraction == pytest.approx(expected / host_job.metrics["read_iops"].stat.mean)
    assert host_job.metrics["read_iops"].of_limit is None
    randread = guest.job("randread")
    assert randread is not None and randread.metrics["read_iops"].stat.single


def test_latency_curves_come_from_the_fio_percentiles(lab: Path) -> None:
    report = build_report([scan_run(lab)])
    host = next(c for c in report.runs[0].cases if c.id == "host-baseline")
    job = host.job("randread")
    assert job is not None
    (curve,) = job.curves
    assert curve.direction == "read" and curve.latency == "clat"
    raw = json.loads((FIO_333 / "randread.json").read_text())["jobs"][0]["read"]["clat_ns"]
    table = {float(k): float(v) for k, v in raw["percentile"].items()}
    points = dict(curve.points)
    assert points[99.0] == table[99.0]
    assert points[50.0] == table[50.0]
    assert 100.0 not in points
    mixed = host.job("randrw-mix90")
    assert mixed is not None
    assert [c.direction for c in mixed.curves] == ["read", "write"]


def test_html_is_self_contained_and_escaped(lab: Path) -> None:
    html = render_html(build_report([scan_run(lab)]))
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # offline: no fetched resource; the only URL is the SVG namespace
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "<link" not in html and " src=" not in html
    # the charts are there, with positive sizes and whiskers
    widths = [float(w) for w in re.findall(r'<rect class="bar[^"]*"[^>]* width="([\d.]+)"', html)]
    assert len(widths) == 12  # 2 jobs x (IOPS + bandwidth) x bars (1+1 randread, 2+2 randrw)
    assert all(w > 0 for w in widths)
    assert html.count('class="whisker"') > 0
    assert html.count('<polyline class="curve"') == 6  # randread: 2 reads; randrw: 2 x r/w
    # the exact command line, one click away
    assert html.count("<details><summary>QEMU command line</summary><pre>") == 2
    assert "× limit" in html


def test_markdown_escapes_user_strings(lab: Path) -> None:
    text = render_markdown(build_report([scan_run(lab)]))
    # command lines are shown verbatim, inside fenced code blocks (literal in Markdown)
    fenced = re.findall(r"^(`{3,})\n(.*?)\n\1$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(fenced) == 2
    assert all(f"/tmp/disk{EVIL}.img" in body for _, body in fenced)
    outside = re.sub(r"^(`{3,})\n.*?\n\1$", "", text, flags=re.MULTILINE | re.DOTALL)
    assert "<script>" not in outside
    assert "tuned&lt;script&gt;alert(1)&lt;/script&gt;\\|\\`x\\`" in text
    # table rows keep their column count despite a "|" in a value
    row = next(line for line in text.splitlines() if line.startswith("| virtio-blk | randread"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 13  # 12 columns
    assert md_escape("a|b_c*d") == "a\\|b\\_c\\*d"
    assert md_fence("x ``` y").startswith("````\n")


def test_csv_json_junit(lab: Path, tmp_path: Path) -> None:
    report = build_report([scan_run(lab)])
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == sum(len(j.metrics) for c in report.runs[0].cases for j in c.jobs)
    row = next(
        r
        for r in rows
        if (r["case"], r["job"], r["metric"]) == ("virtio-blk", "randread", "read_iops")
    )
    assert row["flags"] == "single sample" and row["ci_low"] == ""
    assert float(row["fraction_of_limit"]) > 0
    assert csv_cell("=cmd()") == "'=cmd()" and csv_cell("-5") == "-5"
    again = Report.model_validate_json(render_json(report))
    assert again == report
    root = ET.fromstring(render_junit(report))
    cases = root.findall(".//testcase")
    assert len(cases) == 4  # 2 cases x 2 jobs
    assert all(c.find("failure") is None for c in cases)


def test_junit_fails_failed_cases(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        "r",
        {("ok-case", "j"): {"read_iops": [1.0, 2.0]}},
        case_status={"broken": "failed"},
    )
    root = ET.fromstring(render_junit(build_report([scan_run(run)])))
    failures = root.findall(".//failure")
    assert len(failures) == 1 and "boom" in (failures[0].get("message") or "")


def test_several_runs_are_compared(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", {("c", "j"): {"read_iops": [100.0, 101.0, 99.0]}})
    b = make_run(tmp_path, "b", {("c", "j"): {"read_iops": [80.0, 81.0, 79.0]}})
    recs = [scan_run(a), scan_run(b)]
    report = build_report(recs, comparison=compare_runs(recs[0], recs[1:]))
    (row,) = [r for r in report.comparisons if r.metric == "read_iops"]
    assert row.verdict == "regression" and row.better is False
    assert row.delta_pct == pytest.approx(-20.0)
    assert 'class="num worse"' in render_html(report)


def test_charts_geometry() -> None:
    chart = bar_chart(
        "t",
        "IOPS",
        [
            BarInput("a", "read", 1000.0, 900.0, 1100.0),
            BarInput("b", "read", 500.0, limit=True),
        ],
        width=600,
        left=100,
        right=100,
    )
    assert chart is not None
    first, second = chart.bars
    assert first.width == pytest.approx(2 * second.width)  # proportional to the value
    assert first.whisker is not None
    low, high = first.whisker
    assert (high - 100) / (low - 100) == pytest.approx(1100 / 900)
    assert second.color != first.color  # the limit is grey
    assert [t.label for t in chart.ticks][:2] == ["0", "0.25k"]
    assert bar_chart("t", "IOPS", []) is None
    assert nice_step(97) == 20
    assert nines(99.0) == pytest.approx(2.0)


def test_human_numbers() -> None:
    assert human(15_400.4, "IOPS") == "15.4k"
    assert human(1_234_567, "ns") == "1.23 ms"
    assert human(61_601, "KiB/s") == "60.2 MiB/s"
    assert human(None, "ns") == "-"
    assert human_pm(15_400, 570, "IOPS") == "15.4k ± 0.57k"
    assert human_pm(65_400, 26_600, "ns") == "65.4 ± 26.6 µs"


def test_cli_report_formats(lab: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    done = runner.invoke(app, ["report", str(lab), "--out", str(out), "--format", "md,html"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md"]
    default = runner.invoke(app, ["report", str(lab)])
    assert default.exit_code == 0, default.output
    assert sorted(p.name for p in (lab / "report").iterdir()) == [
        "report.csv",
        "report.html",
        "report.json",
        "report.junit.xml",
        "report.md",
    ]
    bad = runner.invoke(app, ["report", str(lab), "--format", "pdf"])
    assert bad.exit_code == 2


def test_write_report_rejects_unknown_formats(lab: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_report(build_report([scan_run(lab)]), tmp_path, ["pdf"])


def test_command_of_the_last_boot_attempt_or_domain_xml(tmp_path: Path) -> None:
    run = make_run(
        tmp_path, "r", {("qemu", "j"): {"read_iops": [1.0]}, ("virt", "j"): {"read_iops": [1.0]}}
    )
    (run / "cases/qemu/argv.sh").write_text("qemu first-attempt\n")
    (run / "cases/qemu/argv.2.sh").write_text("qemu second-attempt\n")
    (run / "cases/virt/domain.xml").write_text("<domain type='kvm'><name>x</name></domain>\n")
    cases = {c.id: c for c in build_report([scan_run(run)]).runs[0].cases}
    assert (cases["qemu"].command_kind, cases["qemu"].command) == ("argv", "qemu second-attempt\n")
    assert cases["virt"].command_kind == "xml"
    html = render_html(build_report([scan_run(run)]))
    assert "&lt;domain type=&#39;kvm&#39;&gt;" in html
    assert "<summary>libvirt domain XML</summary>" in html


def test_a_nested_run_says_which_l1_kernel_served_its_cases(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        "kernels",
        {
            ("linux-image-amd64", "j"): {"read_iops": [10.0]},
            ("linux-image-cloud-amd64", "j"): {"read_iops": [9.0]},
        },
    )
    l1 = {
        "label": "cloud-amd64", "kernel": "6.1.0-57-cloud-amd64",
        "kernel_package": "linux-image-cloud-amd64", "accel": "tcg", "l2_accel": "tcg",
        "vhost_net": True, "kernel_modules": {"vhost_scsi": True, "rbd": False},
    }  # fmt: skip
    (run / "host.json").write_text(json.dumps({"accel": "tcg", "nested": [l1]}))
    report = build_report([scan_run(run)])
    (line,) = report.runs[0].hypervisors
    assert line == (
        "L1 cloud-amd64: kernel 6.1.0-57-cloud-amd64 (linux-image-cloud-amd64), run under tcg, "
        "its guests under tcg; /dev/vhost-net yes; modules: vhost_scsi"
    )
    assert "- L1 cloud-amd64: kernel 6.1.0-57-cloud-amd64" in render_markdown(report)
    assert "<dt>hypervisor</dt><dd>L1 cloud-amd64: kernel" in render_html(report)
    (run / "host.json").write_text(json.dumps({"accel": "tcg"}))  # a run on the host
    assert build_report([scan_run(run)]).runs[0].hypervisors == []
