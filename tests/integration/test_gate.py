"""The gate on real measurements: two runs of the same throttled disk compare as "no
significant difference"; a throttle 20% lower is a significant regression and exits 3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmlab.guest.image import GuestImage

pytestmark = pytest.mark.integration

SPEC = """
name: gate-{limit}
repeat: 3
guest:
  disks: [{{name: data, model: virtio-blk, backend: {{type: file, size: 64M}},
           throttle: {{iops_total: {limit}}}}}]
jobs:
  - {{name: capped, rw: randread, iodepth: 8, runtime_s: 3, ramp_s: 1}}
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


def test_same_throttle_holds_and_a_lower_throttle_fails_the_gate(
    guest_image: GuestImage, lab_env: dict[str, str], tmp_path: Path
) -> None:
    results = Path(lab_env["RESULTS"])
    runs = []
    for name, limit in (("a", 300), ("b", 300), ("c", 240)):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(SPEC.format(limit=limit))
        done = vmlab("bench", str(spec), "--ci", "--results", str(results / name), env=lab_env)
        assert done.returncode == 0, done.stdout + done.stderr
        (run,) = [p for p in (results / name).iterdir() if p.is_dir()]
        runs.append(run)
    a, b, c = runs
    rule = ["--rule", "read_iops:-5%", "--metric", "read_iops"]
    same_junit = tmp_path / "same.xml"
    same = vmlab(
        "compare", str(b), "--baseline", str(a), *rule, "--junit", str(same_junit), env=lab_env
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "gate: passed - 1 checks, 0 failed, 0 inconclusive" in same.stdout
    assert "<testcase" in same_junit.read_text() and "<failure" not in same_junit.read_text()
    junit = tmp_path / "gate.xml"
    worse = vmlab(
        "compare", str(c), "--baseline", str(a), *rule, "--junit", str(junit), env=lab_env
    )
    assert worse.returncode == 3, worse.stdout + worse.stderr
    assert "1 failed" in worse.stdout
    assert "<failure" in junit.read_text()
