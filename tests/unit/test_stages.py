"""A case's stored stage marks as durations that add up, and `vmlab results show` printing them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs_fixture import make_run
from typer.testing import CliRunner

from vmlab.cli.results import app
from vmlab.report.stages import case_stages, overhead_s
from vmlab.results.rundir import scan_run

TIMINGS = {
    "prepare_s": 0.3,
    "qmp_s": 0.1,
    "serial_ready_s": 2.1,
    "banner_s": 2.2,
    "ssh_ready_s": 2.5,
    "facts_s": 2.9,
    "workload_s": 20.0,
    "jobs_done_s": 24.4,
    "shutdown_s": 0.5,
    "total_s": 25.5,
}


def test_stages_are_consecutive_and_add_up_to_the_wall_time() -> None:
    stages = case_stages(TIMINGS)
    got = {s.name: round(s.seconds, 3) for s in stages}
    assert got == {
        "prepare (boot image, disks, sidecars)": 0.3,
        "QEMU up, QMP answers": 0.1,
        "kernel + /init to ready marker": 2.0,
        "SSH banner": 0.1,
        "SSH login + identity": 0.3,
        "guest facts, NICs": 0.4,
        "jobs: asked runtime": 20.0,
        "jobs: beyond their runtime": 1.5,
        "shutdown (guest, disks, sidecars)": 0.5,
        "other": 0.3,
    }
    assert sum(s.seconds for s in stages) == pytest.approx(TIMINGS["total_s"])
    assert overhead_s(stages) == pytest.approx(5.5)


def test_an_old_run_shows_the_marks_it_has() -> None:
    old = {"qmp_s": 0.2, "serial_ready_s": 4.0, "banner_s": 4.1, "ssh_ready_s": 4.4}
    assert [s.name for s in case_stages(old)] == [
        "QEMU up, QMP answers",
        "kernel + /init to ready marker",
        "SSH banner",
        "SSH login + identity",
    ]
    assert case_stages({}) == []  # never launched


def test_results_show_prints_each_cases_stages(tmp_path: Path) -> None:
    cells = {
        ("virtio-blk", "latency"): {"read_iops": [100.0]},
        ("nvme", "latency"): {"read_iops": [90.0]},
    }
    run = make_run(tmp_path, "run-a", cells)
    status = run / "cases/virtio-blk/status.json"
    data = json.loads(status.read_text()) if status.exists() else {"status": "ok"}
    status.write_text(json.dumps({**data, "timings": {**TIMINGS, "ignored": "text"}}))
    assert scan_run(run).cases[0].timings == TIMINGS
    shown = CliRunner().invoke(
        app, ["show", "run-a", "--results", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert shown.exit_code == 0, shown.output
    table = shown.output.split("stages (seconds)")[1].split("results (")[0]
    assert "virtio-blk" in table and "nvme" not in table  # nvme recorded no timings
    assert "kernel + /init to ready marker" in table and "2.00" in table
    assert "overhead" in table and "5.50" in table
    assert "1.27×" in table  # 25.5 s of wall for 20 s of asked runtime


def test_only_a_guest_with_its_root_on_a_disk_waits_for_acpi() -> None:
    """The initramfs guest stops with QMP quit at once; rootfs and cloud guests unmount first."""
    from vmlab.launch.base import needs_acpi
    from vmlab.render.model import BootImage

    initramfs = BootImage(Path("vmlinux"), Path("initrd.img"), "console=ttyS0")
    rootfs = BootImage(Path("vmlinux"), None, "root=LABEL=vmlab-root", root_disk=Path("r.qcow2"))
    assert not needs_acpi(initramfs)
    assert needs_acpi(rootfs)


def test_asked_runtime_counts_only_what_this_guest_ran(tmp_path: Path) -> None:
    """A resumed case carries r1..r2 from the attempt before: they ran in another guest, so
    this guest was asked for one more 10 s repetition, not three."""
    import yaml

    from vmlab.bench.case import workload_s
    from vmlab.bench.outcome import BenchOutcome
    from vmlab.plan import plan
    from vmlab.results.rundir import RunDir
    from vmlab.spec import parse_spec

    spec = parse_spec(
        yaml.safe_load("name: t\njobs: [{name: j, rw: randread, runtime_s: 8, ramp_s: 2}]")
    )
    (case,) = plan(spec)
    outcome = BenchOutcome(RunDir(path=tmp_path / "run", run_id="run"), [case])
    for repetition in (1, 2):  # carried
        outcome.add(case.id, "j", repetition, {"read_iops": 1.0})
    carried = len(outcome.of(case.id))
    outcome.add(case.id, "j", 3, {"read_iops": 1.0})
    outcome.add("other", "j", 1, {"read_iops": 1.0})
    assert workload_s(case, outcome.of(case.id)[carried:], None) == 10.0
    assert [r.repetition for r in outcome.of(case.id, "j")] == [1, 2, 3]
