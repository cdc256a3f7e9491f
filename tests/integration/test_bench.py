"""The default lab end to end through the real CLI: real QEMU (TCG), real guest, real fio."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.results.index import default_index_path, list_runs

pytestmark = pytest.mark.integration

VMLAB = [sys.executable, "-m", "vmlab.cli"]


def vmlab(
    *args: str, env: dict[str, str], timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VMLAB, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def only_run(results: Path) -> Path:
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return run


def test_default_lab_prints_a_table_from_three_real_guests(
    guest_image: GuestImage, lab_env: dict[str, str], qemu_pids: Callable[[str], list[int]]
) -> None:
    results = Path(lab_env["RESULTS"])
    junit = results.parent / "bench.xml"
    done = vmlab(
        "bench",
        "--runtime",
        "2",
        "--results",
        str(results),
        "--ci",
        "--junit",
        str(junit),
        env=lab_env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # No --accel: the verdict is the probe's (TCG on a host whose KVM cannot run the guest
    # kernel), and the host line says which and why.
    verdict = check_host(kernel=guest_image.kernel)
    (host_line,) = [line for line in lines if line.startswith("host:")]
    assert f"accel {verdict.accel} (" in host_line, host_line
    for case in ("virtio-blk", "virtio-scsi", "nvme"):
        rows = [line for line in lines if line.startswith(f"│ {case} ")]
        assert len(rows) == 2, f"{case}: {rows}"  # latency and throughput
    run = only_run(results)
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert json.loads((run / "host.json").read_text())["accel"] == verdict.accel
    assert junit.read_text().count("<testcase") == 6 and "<failure" not in junit.read_text()
    (indexed,) = list_runs(default_index_path(results))  # indexed after its final status
    assert (indexed.id, indexed.status, indexed.cases) == (run.name, "complete", 3)
    for case in ("virtio-blk", "virtio-scsi", "nvme"):
        cdir = run / "cases" / case
        argv = json.loads((cdir / "argv.json").read_text())
        assert argv[0].endswith("qemu-system-x86_64")
        # local-disk jobs boot the slim initramfs; only the SCSI guest loads the SCSI modules
        assert argv[argv.index("-initrd") + 1] == str(guest_image.slim_initrd)
        assert ("vmlab.modules=scsi" in argv[argv.index("-append") + 1]) == (case == "virtio-scsi")
        assert "VMLAB-READY" in (cdir / "serial.log").read_text(errors="replace")
        guest = json.loads((cdir / "guest.json").read_text())
        assert [d["serial"] for d in guest["disks"].values()] == ["vmlab-data"]
        for job in ("latency", "throughput"):
            jdir = cdir / "jobs" / job / "r1"
            raw = (jdir / "fio.json").read_text()
            assert '"fio version"' in raw
            metrics = json.loads((jdir / "summary.json").read_text())["metrics"]
            assert metrics["read_iops"] > 0 and metrics["write_iops"] > 0
            assert metrics["read_lat_p99_ns"] >= metrics["read_lat_p50_ns"] > 0
            done_job = json.loads((jdir / "exit.json").read_text())
            assert done_job["command"] == "fio --output-format=json+ -"  # job file on stdin
            assert done_job["wall_s"] >= 2
        # every stage timed; the initramfs guest stops with QMP quit, no ACPI wait
        timings = json.loads((cdir / "status.json").read_text())["timings"]
        assert timings["workload_s"] == 4
        assert 0 < timings["ssh_ready_s"] < timings["facts_s"] < timings["jobs_done_s"]
        assert timings["total_s"] > timings["prepare_s"] + timings["jobs_done_s"]
        qemu_log = (cdir / "qemu.log").read_text()
        assert "sending quit" in qemu_log and "system_powerdown" not in qemu_log
    shown = vmlab("results", "show", str(run), env={**lab_env, "COLUMNS": "200"})
    assert shown.returncode == 0 and "stages (seconds)" in shown.stdout, shown.stdout
    # nothing left running or lying around
    assert qemu_pids(str(run)) == []
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []
    assert list(Path(lab_env["VMLAB_SCRATCH"]).iterdir()) == []


QUIT_SPEC = """\
name: quit-keeps-data
runtime_s: 2
guest:
  memory_mib: 512
  cpus: 1
  disks:
    - name: data
      model: virtio-blk
      backend: {{type: file, format: qcow2, path: {path}}}
      cache: writeback
jobs:
  - name: fill
    rw: write
    bs: 64k
    iodepth: 4
    size: 8M
    options: {{buffer_pattern: "0xab"}}
"""


def test_qmp_quit_leaves_a_writeback_qcow2_consistent_and_written(
    guest_image: GuestImage, lab_env: dict[str, str], tmp_path: Path
) -> None:
    """The default guest stops with QMP quit, without the ACPI power button: what the guest
    wrote through QEMU's write-back cache is in the qcow2 and its metadata is consistent."""
    disk = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    spec = tmp_path / "quit.yaml"
    spec.write_text(QUIT_SPEC.format(path=disk))
    results = Path(lab_env["RESULTS"])
    done = vmlab("bench", str(spec), "--results", str(results), "--ci", env=lab_env)
    assert done.returncode == 0, done.stdout + done.stderr
    (case_dir,) = (only_run(results) / "cases").iterdir()
    qemu_log = (case_dir / "qemu.log").read_text()
    assert "sending quit" in qemu_log and "system_powerdown" not in qemu_log
    check = subprocess.run(
        ["qemu-img", "check", str(disk)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    read = subprocess.run(
        ["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0xab 0 8M", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode == 0 and "read 8388608/8388608 bytes" in read.stdout, read.stdout
    assert "Pattern verification failed" not in read.stdout + read.stderr


def test_sigint_stops_everything_and_keeps_finished_cases_then_resume_finishes(
    guest_image: GuestImage, lab_env: dict[str, str], qemu_pids: Callable[[str], list[int]]
) -> None:
    results = Path(lab_env["RESULTS"])
    proc = subprocess.Popen(
        [*VMLAB, "bench", "--runtime", "3", "--results", str(results), "--ci"],
        env=lab_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        first_ok = None
        while time.monotonic() < deadline and first_ok is None:
            for status in results.glob("*/cases/*/status.json"):
                if json.loads(status.read_text())["status"] == "ok":
                    first_ok = status.parent
            time.sleep(0.5)
        assert first_ok is not None, "no case finished in time"
        # let the second guest start, then interrupt in the middle of it
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    run = only_run(results)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert (first_ok / "jobs" / "throughput" / "r1" / "summary.json").exists()
    assert qemu_pids(str(run)) == []
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []
    assert list(Path(lab_env["VMLAB_SCRATCH"]).iterdir()) == []

    resumed = vmlab("bench", "--resume", str(run), "--ci", env=lab_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{first_ok.name}: skipped" in resumed.stdout
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in run.glob("cases/*/status.json")
    }
    assert statuses == {"virtio-blk": "ok", "virtio-scsi": "ok", "nvme": "ok"}
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    # the interrupted attempt is kept beside, not among, the cases
    (attempt,) = (run / "attempts").iterdir()
    assert json.loads((attempt / "status.json").read_text())["status"] == "interrupted"


def test_sigterm_is_ctrl_c_everything_started_is_stopped(
    guest_image: GuestImage, lab_env: dict[str, str], qemu_pids: Callable[[str], list[int]]
) -> None:
    """SIGTERM (a supervisor, `timeout`, Ansible) takes the Ctrl-C path: the guest that is
    booting is stopped, the run is marked interrupted, the exit status is 130."""
    results = Path(lab_env["RESULTS"])
    proc = subprocess.Popen(
        [*VMLAB, "bench", "--runtime", "3", "--results", str(results), "--ci"],
        env=lab_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not qemu_pids(str(results)):
            time.sleep(0.2)
        assert qemu_pids(str(results)), "no guest started in time"
        time.sleep(1)  # QEMU up, the guest booting
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    run = only_run(results)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert qemu_pids(str(results)) == []
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []
    assert list(Path(lab_env["VMLAB_SCRATCH"]).iterdir()) == []


def test_missing_qemu_is_one_clear_message(lab_env: dict[str, str], tmp_path: Path) -> None:
    env = {**lab_env, "PATH": str(tmp_path)}  # no qemu-system-x86_64 on PATH
    done = vmlab("bench", "--results", str(tmp_path / "r"), env=env, timeout_s=60)
    assert done.returncode == 1
    assert "qemu-system-x86_64 is not installed" in done.stderr
    assert "apt-get install qemu-system-x86" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_spec_typo_is_one_clear_message(lab_env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: typo\nguest:\n  disks:\n    - model: virtio-blck\n")
    done = vmlab("bench", str(spec), "--results", str(tmp_path / "r"), env=lab_env, timeout_s=60)
    assert done.returncode == 2
    assert "typo.yaml: invalid spec" in done.stderr
    assert "guest.disks.0.model" in done.stderr and "virtio-blck" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "r").exists()
