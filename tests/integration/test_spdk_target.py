"""A real SPDK v23.01.1 vhost target (../shared/tools/build-spdk) serving TCG guests: malloc,
a file through aio and an RBD image of the micro cluster through librbd, next to
qemu-storage-daemon on the same image (the reference experiment's cases 5b and 5a); guest RAM
on hugepages; a target killed during fio; a target the user runs. Every test checks that
nothing is left: no SPDK process, the hugepage pool and mounts as before, no socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vmlab.bench import BenchOptions, QuietEvents, run_bench
from vmlab.bench.outcome import BenchOutcome
from vmlab.errors import CommandError, HostError
from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.plan import Case
from vmlab.spdk.plan import MallocBackend, render_plan
from vmlab.spdk.target import SpdkApp, SpdkTarget
from vmlab.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]

JOB = "{name: qd4, rw: randrw, rwmixread: 70, iodepth: 4, runtime_s: 2, size: 32M}"


def bench(text: str, lab_env: dict[str, str], image: GuestImage, **kw: object) -> BenchOutcome:
    spec = parse_spec(yaml.safe_load(text), source=text)
    return run_bench(
        spec,
        facts=check_host(probe=False),
        image=image,
        options=BenchOptions(results_root=Path(lab_env["RESULTS"])),
        **kw,  # type: ignore[arg-type]
    )


def need_ceph() -> None:
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")


def test_spdk_malloc_file_and_rbd_next_to_qsd_on_the_same_image(
    guest_image: GuestImage, lab_env: dict[str, str], spdk_leaves_nothing: None, tmp_path: Path
) -> None:
    """One run, one SPDK target for its three SPDK cases, one report with 5a and 5b."""
    need_ceph()
    rbd = "backend: {type: rbd, image: shared, size: 128M}"
    outcome = bench(
        f"""
name: spdk
guest:
  memory_mib: 384
  cpus: 1
  disks:
    - - {{name: data, model: vhost-user-blk, target: spdk, spdk: {{mem_mib: 512}},
         backend: {{type: malloc, size: 64M}}}}
    - - {{name: data, model: vhost-user-blk, target: spdk, spdk: {{mem_mib: 512}},
         backend: {{type: file, size: 64M}}}}
    - - {{name: data, model: vhost-user-blk, target: spdk, spdk: {{mem_mib: 512}}, {rbd}}}
    - - {{name: data, model: vhost-user-blk, {rbd}}}
jobs: [{JOB}]
""",
        lab_env,
        guest_image,
    )
    assert outcome.ok, outcome.failed
    iops = {r.case_id: r.metrics["read_iops"] for r in outcome.results}
    malloc, aio, spdk_rbd, qsd_rbd = (
        "vhost-user-blk-spdk-malloc",
        "vhost-user-blk-spdk-file",
        "vhost-user-blk-spdk-rbd",
        "vhost-user-blk-rbd",
    )
    assert set(iops) == {malloc, aio, spdk_rbd, qsd_rbd}
    assert all(v > 0 for v in iops.values()), iops
    run = outcome.run.path
    # one target served the run's three SPDK cases; each case has its span of the log
    assert [p.name for p in (run / "spdk").iterdir()] == ["vhost-1.log"]
    for case in (malloc, aio, spdk_rbd):
        plan = json.loads((run / "cases" / case / "spdk-data.json").read_text())
        assert plan["setup"][-1]["method"] == "vhost_create_blk_controller"
        assert "vhost_delete_controller" in json.dumps(plan["teardown"])
        assert (run / "cases" / case / "spdk-data.log").is_file()
        argv = (run / "cases" / case / "argv.sh").read_text()
        assert "vhost-user-blk-pci" in argv and "share=on" in argv
    methods = [
        c["method"]
        for c in json.loads((run / f"cases/{spdk_rbd}/spdk-data.json").read_text())["setup"]
    ]
    assert methods == [
        "bdev_rbd_register_cluster",
        "bdev_rbd_create",
        "vhost_create_blk_controller",
    ]
    assert "driver=rbd" in (run / f"cases/{qsd_rbd}/qsd-data.argv.sh").read_text()
    log = (run / "spdk" / "vhost-1.log").read_text()
    assert "vmlab: stopped (status 0)" in log  # SIGINT: SPDK's clean shutdown
    report = subprocess.run(
        [sys.executable, "-m", "vmlab.cli", "report", str(run), "--out", str(tmp_path / "r")],
        env=lab_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    markdown = next((tmp_path / "r").glob("*.md")).read_text()
    for case in iops:
        assert case in markdown
    print("read IOPS:", json.dumps(iops))  # what `pytest -s` shows


def test_guest_memory_on_hugepages_with_and_without_vhost_user(
    guest_image: GuestImage, lab_env: dict[str, str], spdk_leaves_nothing: None
) -> None:
    outcome = bench(
        f"""
name: huge
guest:
  memory_mib: 320
  memory_backend: hugepages
  cpus: 1
  disks:
    - - {{name: data, model: virtio-blk, backend: {{type: file, size: 64M}}}}
    - - {{name: data, model: vhost-user-blk, target: spdk, spdk: {{mem_mib: 512}},
         backend: {{type: malloc, size: 64M}}}}
jobs: [{JOB}]
""",
        lab_env,
        guest_image,
    )
    assert outcome.ok, outcome.failed
    run = outcome.run.path
    plain = (run / "cases/virtio-blk-file/argv.sh").read_text()
    vhost_user = (run / "cases/vhost-user-blk-spdk-malloc/argv.sh").read_text()
    assert "hugetlb=on,hugetlbsize=2M" in plain and "share=off" in plain
    assert "hugetlb=on,hugetlbsize=2M" in vhost_user and "share=on" in vhost_user
    assert len(outcome.results) == 2


class KillTargetDuringFio(QuietEvents):
    """When fio starts in the first SPDK case, SIGKILL the SPDK target."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.killed: list[int] = []
        self.threads: list[threading.Thread] = []

    def stage(self, case: Case, what: str) -> None:
        super().stage(case, what)
        if what.startswith("fio ") and "spdk" in case.id and not self.threads:
            thread = threading.Thread(target=self._kill)
            thread.start()
            self.threads.append(thread)

    def _kill(self) -> None:
        time.sleep(1.0)
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


def test_a_target_killed_during_fio_fails_its_case_and_the_run_goes_on(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    spdk_vhost: Path,
    spdk_processes: Callable[[Path], list[int]],
    spdk_leaves_nothing: None,
) -> None:
    events = KillTargetDuringFio(lambda: spdk_processes(spdk_vhost))
    started = time.monotonic()
    outcome = bench(
        """
name: crash
guest:
  memory_mib: 320
  cpus: 1
  disks:
    - - {name: data, model: vhost-user-blk, target: spdk, spdk: {mem_mib: 512},
         backend: {type: malloc, size: 64M}}
    - - {name: data, model: virtio-blk, backend: {type: file, size: 64M}}
    - - {name: data, model: vhost-user-blk, target: spdk, spdk: {mem_mib: 512},
         backend: {type: file, size: 64M}}
jobs: [{name: qd4, rw: randrw, rwmixread: 70, iodepth: 4, runtime_s: 4, size: 32M}]
""",
        lab_env,
        guest_image,
        events=events,
    )
    for thread in events.threads:
        thread.join(timeout=30)
    assert len(events.killed) == 1
    crashed = "vhost-user-blk-spdk-malloc"
    assert set(outcome.failed) == {crashed}
    assert "was killed by SIGKILL" in outcome.failed[crashed]
    assert {r.case_id for r in outcome.results} == {"virtio-blk-file", "vhost-user-blk-spdk-file"}
    run = outcome.run.path
    status = json.loads((run / "cases" / crashed / "status.json").read_text())
    assert status["status"] == "failed" and "SPDK vhost" in status["error"]
    case_log = (run / "cases" / crashed / "spdk-data.log").read_text()
    assert "was killed by SIGKILL" in case_log
    # the case after the crash got a new target, with a log of its own
    assert sorted(p.name for p in (run / "spdk").iterdir()) == ["vhost-1.log", "vhost-2.log"]
    print(f"crash run: {time.monotonic() - started:.1f} s")


def test_a_target_the_user_runs_keeps_running_and_keeps_nothing_of_vmlab(
    spdk_vhost: Path, lab_env: dict[str, str], spdk_leaves_nothing: None, tmp_path: Path
) -> None:
    """Attach to a running target (spdk.rpc_socket): vmlab's objects are made and deleted;
    SPDK's own JSON-RPC client gets the real target's error answers mapped."""
    from vmlab.hugepages import reserved

    app = SpdkApp(str(spdk_vhost), cpumask=0x1, mem_size_mib=512)
    with (
        reserved(256),
        SpdkTarget.spawn(app, log_path=tmp_path / "user.log") as user,
        SpdkTarget.attach(user.rpc_socket) as target,
    ):
        assert target.version is not None and target.version.text.startswith("SPDK v23.01")
        disk = target.add_disk(render_plan("vmlab-data", MallocBackend(size_bytes=32 << 20)))
        assert disk.socket.exists() and disk.socket.parent == user.vhost_socket_dir
        assert target.rpc is not None
        with pytest.raises(CommandError) as exists:
            target.add_disk(render_plan("vmlab-data", MallocBackend(size_bytes=32 << 20)))
        assert exists.value.returncode == -17  # File exists, from the real target
        with pytest.raises(CommandError) as params:
            target.rpc.call("bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "x": 1})
        assert params.value.returncode == -32603
        assert params.value.hint is not None and "rejected the parameters" in params.value.hint
        with pytest.raises(HostError, match="not within the SPDK target's core mask"):
            target.add_disk(render_plan("d1", MallocBackend(size_bytes=8 << 20), cpumask="0x2"))
        target.remove_disk(disk)
        assert target.rpc.call("bdev_get_bdevs") == []
        assert target.rpc.call("vhost_get_controllers") == []
        assert user.failure() is None  # the user's target runs on


def test_ctrl_c_during_fio_gives_everything_back(
    guest_image: GuestImage, lab_env: dict[str, str], spdk_leaves_nothing: None, tmp_path: Path
) -> None:
    """SIGINT to `vmlab bench` while fio runs on an SPDK disk in a hugepage guest: the run is
    marked interrupted, and the target, its mount and the run's hugepages are gone."""
    spec = tmp_path / "int.yaml"
    spec.write_text(
        "name: int\nguest:\n  memory_mib: 320\n  memory_backend: hugepages\n  cpus: 1\n"
        "  disks: [{name: data, model: vhost-user-blk, target: spdk, spdk: {mem_mib: 512},"
        " backend: {type: malloc, size: 64M}}]\n"
        "jobs: [{name: long, rw: randread, iodepth: 4, runtime_s: 60, size: 32M}]\n"
    )
    results = Path(lab_env["RESULTS"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmlab.cli", "bench", str(spec), "--ci", "--results", str(results)],
        env=lab_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "fio long r1" in line:
            time.sleep(2.0)
            proc.send_signal(signal.SIGINT)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, "".join(seen) + out
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert "vmlab: stopped (status 0)" in (run / "spdk" / "vhost-1.log").read_text()  # SIGINT
