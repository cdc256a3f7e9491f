"""Repetitions that stop when sure, on real guests: with repeat {min: 3, max: 12, ci_pct: 2},
a disk QEMU throttles stops sooner than the same disk unthrottled (noisy under TCG), and the
report and `vmlab results show` say how many repetitions each took and why they stopped.

The noise is made, not hoped for: TCG alone was ±5-7 % after 12 repetitions on a busy
machine but ±1.4 % after 3 on a quiet one, so the I/Os arrive as a Poisson process, which
the throttled disk smooths and the unthrottled one passes on. A Poisson count can still come
out steady three times in a row (about 3 % of runs), so the test replays the stopping rule on
the stored repetitions (each job stopped at the first count the rule accepts), and compares
the two counts when the unthrottled one was noisy after 3, as it nearly always is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmlab.bench.repeat import decide
from vmlab.guest.image import GuestImage
from vmlab.metrics import stop_metric
from vmlab.spec import Repeat

pytestmark = pytest.mark.integration

SPEC = """
name: until-ci
repeat: {min: 3, max: 12, ci_pct: 2}
guest:
  disks:
    - name: data
      model: virtio-blk
      backend: {type: file, size: 64M}
      throttle: [{iops_total: 200}, null]   # an axis: case "200" (throttled) and "none"
jobs:
  # I/Os arrive as a Poisson process, 400 a second: the throttled disk serves a steady 200,
  # the unthrottled one what arrived, ±5 % (1/sqrt(400)) from one repetition to the next.
  - name: randread
    rw: randread
    iodepth: 8
    runtime_s: 1
    ramp_s: 1
    options: {rate_iops: 400, rate_process: poisson}
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


def _stop_values(job_dir: Path) -> list[float]:
    """The stop metric of each measured repetition r1, r2... in order."""
    reps = sorted(job_dir.glob("r*/summary.json"), key=lambda p: int(p.parent.name[1:]))
    metrics = [json.loads(p.read_text())["metrics"] for p in reps if p.parent.name != "r0"]
    return [float(m[stop_metric(m)]) for m in metrics]


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
        for case in ("200", "none")
    }
    throttled, free = stops["200"], stops["none"]
    print(f"throttled: {throttled}\nunthrottled: {free}")  # the figures, with -s
    # every repetition that counted is on disk, and no more
    for case, stop in stops.items():
        reps = sorted((run / "cases" / case / "jobs" / "randread").glob("r*/summary.json"))
        assert len(reps) == stop["repetitions"], case
    assert throttled["reason"] == "ci" and throttled["ci_pct"] <= 2
    assert free["reason"] in ("ci", "max")
    # the rule, replayed: every job stopped at the first count it accepts, not before or after
    rule = Repeat(min=3, max=12, ci_pct=2)
    values = {case: _stop_values(run / "cases" / case / "jobs" / "randread") for case in stops}
    for case, stop in stops.items():
        first = next(
            n for n in range(rule.min, len(values[case]) + 1) if decide(rule, values[case][:n])
        )
        assert first == stop["repetitions"] == len(values[case]), (case, values[case])
    assert throttled["repetitions"] == 3
    if decide(rule, values["none"][:3]) is None:  # noisy after 3: it went on, so it took more
        assert throttled["repetitions"] < free["repetitions"] <= 12
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
    assert jobs["200"]["stop"]["repetitions"] == throttled["repetitions"]
    assert jobs["none"]["stop"]["reason"] == free["reason"]
    shown = vmlab("results", "show", str(run), env={**lab_env, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "stopped" in shown.stdout and "ci: mean ±" in shown.stdout
