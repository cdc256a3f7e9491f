"""Storage stacks booted and measured for real under TCG: every device model this host can
run, raw and qcow2 (overlay) backends, vhost-user-blk through qemu-storage-daemon, and the
throttle ground truth that proves the measuring chain honest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vmlab.bench import BenchOptions, run_bench
from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.spec import parse_spec

pytestmark = pytest.mark.integration


def bench(text: str, results: Path, image: GuestImage):  # type: ignore[no-untyped-def]
    spec = parse_spec(yaml.safe_load(text), source=text)
    return run_bench(
        spec, facts=check_host(), image=image, options=BenchOptions(results_root=results)
    )


def test_every_device_model_and_backend_in_one_guest(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
    tmp_path: Path,
) -> None:
    outcome = bench(
        """
name: stacks
guest:
  memory_mib: 512
  disks:
    - {name: vblk, model: virtio-blk, backend: {type: file, format: raw, size: 64M}}
    - {name: scsi, model: virtio-scsi, backend: {type: file, format: qcow2, size: 64M},
       iothread: true}
    - {name: nvme, model: nvme, backend: {type: file, format: raw, size: 64M, overlay: true}}
    - {name: vub, model: vhost-user-blk, backend: {type: file, format: raw, size: 64M},
       num_queues: 2}
jobs:
  - {name: vblk, disk: vblk, rw: randrw, iodepth: 4, runtime_s: 1}
  - {name: scsi, disk: scsi, rw: randrw, iodepth: 4, runtime_s: 1}
  - {name: nvme, disk: nvme, rw: randrw, iodepth: 4, runtime_s: 1}
  - {name: vub, disk: vub, rw: randrw, iodepth: 4, runtime_s: 1}
""",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert outcome.ok, outcome.failed
    got = {r.job: r.metrics for r in outcome.results}
    assert set(got) == {"vblk", "scsi", "nvme", "vub"}
    for job, metrics in got.items():
        assert metrics["read_iops"] > 0 and metrics["write_iops"] > 0, job
    case_dir = outcome.run.path / "cases" / "default"
    guest = json.loads((case_dir / "guest.json").read_text())
    by_name = {Path(dev).name: d for dev, d in guest["disks"].items()}
    assert any(name.startswith("nvme") for name in by_name)
    vub = [d for d in by_name.values() if d["pci"] == "0000:00:13.0"]
    assert len(vub) == 1 and vub[0]["queues"] == 2  # the guest driver sees num_queues
    assert (case_dir / "qsd-vub.argv.json").exists() and (case_dir / "qsd-vub.log").exists()
    # the NVMe disk is served from the case's own overlay over the shared raw base
    argv = (case_dir / "argv.sh").read_text()
    assert "filename=" + lab_env["VMLAB_SCRATCH"] in argv
    assert "/default/nvme.overlay.qcow2" in argv and "driver=qcow2,node-name=fmt-nvme" in argv
    assert qemu_pids(str(outcome.run.path)) == []
    assert qemu_pids(lab_env["VMLAB_SCRATCH"]) == []
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []


def test_throttled_disk_measures_the_limit_within_5_percent(
    guest_image: GuestImage, lab_env: dict[str, str]
) -> None:
    limit = 300  # well under what TCG reaches with iodepth 8 (thousands of IOPS)
    outcome = bench(
        f"""
name: throttle
guest:
  disks:
    - {{name: data, model: virtio-blk, backend: {{type: file, size: 64M}},
       throttle: {{iops_total: {limit}}}}}
jobs:
  - {{name: capped, rw: randread, iodepth: 8, runtime_s: 8, ramp_s: 2}}
""",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert outcome.ok, outcome.failed
    (result,) = outcome.results
    measured = result.metrics["read_iops"]
    assert abs(measured - limit) / limit < 0.05, f"measured {measured:.1f} IOPS for a {limit} limit"


def test_host_baseline_and_repetitions_with_a_warmup(
    guest_image: GuestImage, lab_env: dict[str, str]
) -> None:
    outcome = bench(
        """
name: baseline
baseline: true
repeat: 2
warmup: true
guest:
  disks: [{name: data, model: virtio-blk, backend: {type: file, size: 64M}}]
jobs:
  - {name: qd4, rw: randread, iodepth: 4, runtime_s: 1, options: {nrfiles: 1, fsync_on_close: 1}}
""",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert outcome.ok, outcome.failed
    got = sorted((r.case_id, r.repetition) for r in outcome.results)
    assert got == [
        ("default", 0),
        ("default", 1),
        ("default", 2),
        ("host-baseline", 0),
        ("host-baseline", 1),
        ("host-baseline", 2),
    ]
    base = outcome.run.path / "cases" / "host-baseline"
    case = json.loads((base / "case.json").read_text())
    job = (base / "jobs" / "qd4" / "r1" / "job.fio").read_text()
    # the guest's own backing file, and nothing else, whatever the options say
    assert [line for line in job.splitlines() if "/" in line.split("=", 1)[-1]] == [
        f"filename={case['targets']['data']}"
    ]
    host_iops = [r.metrics["read_iops"] for r in outcome.results if r.case_id == "host-baseline"]
    assert min(host_iops) > 0
