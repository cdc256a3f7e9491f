"""A systemd + cloud-init guest through the bench: NoCloud seed, key and host key from the
seed, readiness after cloud-init, fio on a data disk, guest facts stored, base untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vmlab.bench import BenchOptions, run_bench
from vmlab.guest.cloud import sha256_file
from vmlab.guest.image import GuestImage
from vmlab.guest.rootfs import build_rootfs
from vmlab.host import check_host
from vmlab.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]


def test_cloud_init_guest_runs_fio_through_the_bench(
    guest_image: GuestImage, lab_env: dict[str, str]
) -> None:
    rootfs = build_rootfs(systemd=True, cloud_init=True)  # cached after the first build
    before = sha256_file(rootfs.base)
    text = """
name: cloud
guest:
  memory_mib: 1024
  image: {kind: rootfs, systemd: true, cloud_init: true}
  disks: [{name: data, model: virtio-blk, backend: {type: file, size: 64M}}]
jobs:
  - {name: qd4, rw: randrw, iodepth: 4, runtime_s: 2}
"""
    outcome = run_bench(
        parse_spec(yaml.safe_load(text), source=text),
        facts=check_host(),
        image=guest_image,
        options=BenchOptions(results_root=Path(lab_env["RESULTS"]), timeout_scale=2),
    )
    assert outcome.ok, outcome.failed
    (result,) = outcome.results
    assert result.metrics["read_iops"] > 0
    case = outcome.run.path / "cases" / "default"
    assert json.loads((case / "cloud-init.json").read_text())
    facts = json.loads((case / "guest.json").read_text())
    assert "Debian" in facts["distro"]
    assert "vmlab-data" in [d["serial"] for d in facts["disks"].values()]
    status = json.loads((case / "status.json").read_text())
    assert status["timings"]["cloud_init_s"] >= status["timings"]["ssh_ready_s"]
    assert sha256_file(rootfs.base) == before  # the guest wrote to its overlay only
