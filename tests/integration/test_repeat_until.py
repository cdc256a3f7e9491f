"""Repetitions that stop when sure, on real guests: with repeat {min: 3, max: 12, ci_pct: 2},
a disk QEMU throttles stops sooner than the same disk unthrottled (noisy under TCG), and the
report and `vmlab results show` say how many repetitions each took and why they stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmlab.guest.image import GuestImage

pytestmark = pytest.mark.integration

SPEC = """
name: until-ci
repeat: {min: 3, max: 12, ci_pct: 2}
guest:
  disks:
    - name: data
      model: virtio-blk
      backend: {type: file, size: 64M}
      throttle: [{iops_total: 300}, null]   # an axis: case "300" (throttled) and "none"
jobs:
  - {name: randread, rw: randread, iodepth: 8, runtime_s: 1, ramp_s: 1}
"""


def vmlab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmlab.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_throttled_disk_is_sure_sooner_than_an_unthrottled_one(
    guest_image: GuestImage, lab_env: dict[str, str], tmp_path: Path
) -> None:
    results = Path(lab_env["RESULTS"])
    spec = tmp_path / "until.yaml"
    spec.write_text(SPEC)
    done = vmlab("bench", str(spec), "--ci", "--results", str(results), env=lab_env)
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    stops = {
        case: json.loads((run / "cases" / case / "jobs" / "randread" / "repeat.json").read_text())
        for case in ("300", "none")
    }
    throttled, free = stops["300"], stops["none"]
    print(f"throttled: {throttled}\nunthrottled: {free}")  # the figures, with -s
    # every repetition that counted is on disk, and no more
    for case, stop in stops.items():
        reps = sorted((run / "cases" / case / "jobs" / "randread").glob("r*/summary.json"))
        assert len(reps) == stop["repetitions"], case
    assert throttled["reason"] == "ci" and throttled["ci_pct"] <= 2
    assert 3 <= throttled["repetitions"] < free["repetitions"] <= 12
    assert free["reason"] in ("ci", "max")
    # the bench log says it as each job stops
    assert f"randread: {throttled['repetitions']} repetitions, ci: " in done.stdout
    # the report: per cell, how many repetitions and why
    report_dir = tmp_path / "report"
    made = vmlab("report", str(run), "--out", str(report_dir), "--format", "md,json", env=lab_env)
    assert made.returncode == 0, made.stdout + made.stderr
    text = (report_dir / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| configuration |"))
    n_column = [c.strip() for c in header.strip("|").split(" | ")].index("n")
    for case, stop in stops.items():
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {case} | randread |")]
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[n_column] == str(stop["repetitions"]), row
        assert cells[-1].startswith(f"{stop['reason']}: "), row
    data = json.loads((report_dir / "report.json").read_text())
    jobs = {c["id"]: c["jobs"][0] for c in data["runs"][0]["cases"]}
    assert jobs["300"]["stop"]["repetitions"] == throttled["repetitions"]
    assert jobs["none"]["stop"]["reason"] == free["reason"]
    shown = vmlab("results", "show", str(run), env={**lab_env, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "stopped" in shown.stdout and "ci: mean ±" in shown.stdout
