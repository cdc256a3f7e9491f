"""The HTML report in a real browser: headless Chromium loads it offline, its inline script
checks that every chart drew (SVG bars with a non-empty box, curves and sweep lines with a
length, heat-map cells), that no label falls outside its chart and that nothing is wider than
the window, and screenshots go to artifacts/ (report.png, report-sweep.png) for people."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from vmlab.report.compare import compare_runs
from vmlab.report.model import build_report
from vmlab.report.render import write_report
from vmlab.results.importer import group_folder, import_tree, read_units, write_import
from vmlab.results.rundir import scan_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIO_333 = REPO / "tests" / "data" / "fio" / "fio-3.33"
FIO_31 = REPO / "tests" / "data" / "fio" / "fio-3.1-raid-ssd"
FIO_218 = REPO / "tests" / "data" / "fio" / "fio-2.18-ssd"
ARTIFACTS = REPO / "artifacts"
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
BROWSER_TIMEOUT_S = 120.0
WINDOW = (1280, 2000)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "chromium is missing: apt-get install -y chromium fonts-dejavu-core "
            "(scripts/setup --dev installs both)"
        )
    return found


def _run_browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its helper processes go with it
    )
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _lab_run(results: Path) -> Path:
    """A run from real fio 3.33 output: a host baseline, two guest configurations, two jobs."""
    files = {
        "host-baseline": ["randrw-jsonplus.json", "randrw.json", "randread.json"],
        "virtio-blk": [
            "randrw-lat-percentiles.json",
            "randrw-normal-json.txt",
            "status-interval.txt",
        ],
    }
    cases = []
    for case_id, names in files.items():
        units = [u for name in names for u in read_units(FIO_333 / name)[0]]
        cases.append(group_folder(units, case_id, FIO_333))
    run = write_import(results, cases, name="browser", source=FIO_333).path
    for case_id in files:
        (run / "cases" / case_id / "argv.sh").write_text(
            f"qemu-system-x86_64 -name {case_id} -drive 'file=/tmp/{EVIL}.img'\n"
        )
    meta_path = run / "cases" / "virtio-blk" / "case.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["note"] = EVIL
    meta_path.write_text(json.dumps(meta))
    return run


def _screenshot(binary: str, profile: Path, html: Path, window: tuple[int, int], name: str) -> Path:
    """A screenshot of ``html`` at ``window`` size, kept as artifacts/NAME for people."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    _run_browser(
        binary,
        profile,
        f"--screenshot={shot}",
        f"--window-size={window[0]},{window[1]}",
        "--hide-scrollbars",
        html.as_uri(),
    )
    return shot


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_html_report_draws_in_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    run = _lab_run(tmp_path / "results")
    (html,) = write_report(build_report([scan_run(run)]), tmp_path / "report", ["html"])
    source = html.read_text()
    bars = len(re.findall(r'<rect class="bar', source))
    curves = len(re.findall(r'<polyline class="curve"', source))
    assert bars > 0 and curves > 0

    dom = _run_browser(binary, tmp_path / "profile-dom", "--dump-dom", html.as_uri()).stdout
    assert 'data-charts-ready="yes"' in dom, dom[:2000]
    assert re.search(r'data-bars-drawn="(\d+)"', dom).group(1) == str(bars)  # type: ignore[union-attr]
    assert re.search(r'data-curves-drawn="(\d+)"', dom).group(1) == str(curves)  # type: ignore[union-attr]
    assert _dom_number(dom, "text-clipped") == 0
    # user strings arrived as text, not as elements
    assert "<img" not in dom
    assert '&lt;script&gt;alert("x")&lt;/script&gt;' in dom
    assert dom.count("<script>") == 1  # the report's own

    shot = _screenshot(binary, tmp_path / "profile-shot", html, WINDOW, "report.png")
    assert _png_size(shot) == WINDOW
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few KB


SWEEP_WINDOW = (1400, 3000)


def _dom_number(dom: str, name: str) -> int:
    found = re.search(rf'data-{name}="(\d+)"', dom)
    assert found is not None, f"no data-{name} in the DOM"
    return int(found.group(1))


def test_sweep_report_of_the_raid_corpus_in_chromium(tmp_path: Path) -> None:
    """The fio-3.1-raid-ssd import (iodepth x numjobs, 98 files) with fio-2.18-ssd as a second
    run: Chromium at 1400 px draws the IOPS-vs-iodepth chart with one line per numjobs (and
    the other run), both axes labelled, heat-maps, the comparison; nothing is cut off."""
    binary = _chromium()
    results = tmp_path / "results"
    raid = scan_run(Path(import_tree(FIO_31, results).runs[0].path))
    ssd = scan_run(Path(import_tree(FIO_218, results).runs[0].path))
    report = build_report([raid, ssd], comparison=compare_runs(raid, [ssd]))
    (html,) = write_report(report, tmp_path / "report", ["html"])
    source = html.read_text()
    lines = source.count('<polyline class="sweep-line"')
    cells = source.count('<rect class="heat-cell"')
    assert lines == 6 * 8 and cells == 4 * 49  # 2 workloads x 3 metrics x (7 numjobs + 1 run)

    width, height = SWEEP_WINDOW
    dom = _run_browser(
        binary,
        tmp_path / "profile-dom",
        f"--window-size={width},{height}",
        "--dump-dom",
        html.as_uri(),
    ).stdout
    assert 'data-charts-ready="yes"' in dom, dom[:2000]
    assert _dom_number(dom, "sweeps-drawn") == lines
    assert _dom_number(dom, "heat-cells-drawn") == cells
    assert _dom_number(dom, "text-clipped") == 0, re.findall(r"<text[^>]*data-clipped[^<]*", dom)
    assert _dom_number(dom, "page-width") <= width
    assert _dom_number(dom, "tables-overflowing") == 0
    # the chart people read first: randread IOPS against iodepth, both axes labelled
    first = re.search(r'<svg class="sweep".*?</svg>', dom, flags=re.DOTALL)
    assert first is not None
    svg = first.group(0)
    assert 'aria-label="randread: IOPS by iodepth"' in svg
    assert re.search(r'<text class="axis-title x"[^>]*>iodepth, log scale</text>', svg)
    assert re.search(r'<text class="axis-title y"[^>]*>read IOPS</text>', svg)
    assert len(re.findall(r'<text class="tick x"', svg)) == 8  # iodepth 1..128
    assert len(re.findall(r'<text class="tick y"', svg)) >= 3
    assert '<section id="comparison">' in dom

    shot = _screenshot(binary, tmp_path / "profile-shot", html, SWEEP_WINDOW, "report-sweep.png")
    assert _png_size(shot) == SWEEP_WINDOW
    assert shot.stat().st_size > 50_000
