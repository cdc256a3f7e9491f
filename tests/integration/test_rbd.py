"""Ceph RBD under QEMU on a real micro cluster: QEMU's librbd behind virtio-blk,
qemu-storage-daemon's rbd driver behind vhost-user-blk, and fio's rbd engine on the host as
the limit; a pattern written through one path verifies through the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from vmlab.bench import BenchOptions, QuietEvents, run_bench
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.rbd import RbdImages
from vmlab.errors import HostError
from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.paths import state_dir
from vmlab.plan import Case
from vmlab.spdk.find import find_spdk
from vmlab.spec import parse_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def micro(lab_env: dict[str, str]) -> Iterator[MicroCluster]:
    """The micro cluster vmlab uses for `cluster: {}` (in this test's private state dir)."""
    cluster = MicroCluster(state_dir() / "ceph")
    try:
        yield cluster
    finally:
        cluster.purge()


def bench(text: str, results: Path, image: GuestImage):  # type: ignore[no-untyped-def]
    spec = parse_spec(yaml.safe_load(text), source=text)
    return run_bench(
        spec, facts=check_host(), image=image, options=BenchOptions(results_root=results)
    )


def test_librbd_and_qsd_rbd_paths_with_a_host_rbd_baseline(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
    qemu_pids: Callable[[str], list[int]],
) -> None:
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    outcome = bench(
        """
name: rbd
baseline: true
guest:
  disks:
    - name: data
      model: [virtio-blk, vhost-user-blk]
      backend: {type: rbd, size: 256M}
      cache: directsync
jobs:
  - {name: qd4, rw: randrw, rwmixread: 70, iodepth: 4, runtime_s: 2}
""",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert outcome.ok, outcome.failed
    got = {r.case_id: r.metrics for r in outcome.results}
    assert set(got) == {"host-baseline", "virtio-blk", "vhost-user-blk"}
    for case, metrics in got.items():
        assert metrics["read_iops"] > 0 and metrics["write_iops"] > 0, case
    run = outcome.run.path
    argv = (run / "cases/virtio-blk/argv.sh").read_text()
    assert "driver=rbd" in argv and "pool=vmlab" in argv
    assert "driver=rbd" in (run / "cases/vhost-user-blk/qsd-data.argv.sh").read_text()
    assert "ioengine=rbd" in (run / "cases/host-baseline/jobs/qd4/r1/job.fio").read_text()
    # the image vmlab made for the run is gone, the cluster this run started is down again
    assert not micro.status().running
    micro.up()
    st = micro.status()
    assert st.report is not None, st.problem
    assert st.images == ()
    assert qemu_pids(str(run)) == []


def test_a_pattern_written_through_librbd_verifies_through_vhost_user_blk(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
) -> None:
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    info = micro.up()
    RbdImages(info).create("vmlab", "pattern", 64 << 20)
    job = (
        "{name: pattern, rw: write, bs: 64k, iodepth: 4, runtime_s: 60, size: 32M, "
        "options: {verify: crc32c, randrepeat: 1, time_based: 0%s}}"
    )
    disk = "{name: data, model: %s, backend: {type: rbd, image: pattern}}"
    write = bench(
        f"name: w\nguest:\n  disks: [{disk % 'virtio-blk'}]\njobs: [{job % ', do_verify: 0'}]\n",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert write.ok, write.failed
    verify = bench(
        f"name: v\nguest:\n  disks: [{disk % 'vhost-user-blk'}]\n"
        f"jobs: [{job % ', verify_only: 1'}]\n",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert verify.ok, verify.failed  # fio exits non-zero on a verify mismatch
    (result,) = verify.results
    assert result.metrics["read_iops"] > 0
    # qsd's own output is in the case, with when its export was proven ready for QEMU
    assert (
        "export exp-data ready on" in (verify.run.path / "cases/default/qsd-data.log").read_text()
    )
    # a different pattern must fail: prove the check can fail
    bad = bench(
        f"name: b\nguest:\n  disks: [{disk % 'vhost-user-blk'}]\n"
        f"jobs: [{job % ', verify_only: 1, verify_pattern: 0xdeadbeef'}]\n",
        Path(lab_env["RESULTS"]),
        guest_image,
    )
    assert not bad.ok


class KillOsdDuringFio(QuietEvents):
    """When fio starts in the guest, kill -9 the OSD, then bring it back: mid-write."""

    def __init__(self, micro: MicroCluster) -> None:
        self.micro = micro
        self.threads: list[threading.Thread] = []
        self.killed: list[int] = []

    def stage(self, case: Case, what: str) -> None:
        super().stage(case, what)
        if what.startswith("fio ") and not self.threads:
            thread = threading.Thread(target=self._outage)
            thread.start()
            self.threads.append(thread)

    def _outage(self) -> None:
        time.sleep(2.0)
        (osd,) = [d for d in self.micro.status().daemons if d.name.startswith("osd")]
        assert osd.pid is not None
        os.kill(osd.pid, signal.SIGKILL)
        self.killed.append(osd.pid)
        time.sleep(2.0)
        self.micro.up()


def test_fio_verify_holds_across_an_osd_kill_and_restart(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
) -> None:
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    micro.up()
    events = KillOsdDuringFio(micro)
    text = """
name: outage
guest:
  disks: [{name: data, model: virtio-blk, backend: {type: rbd, size: 128M}, cache: directsync}]
jobs:
  - {name: outage, rw: randwrite, bs: 16k, iodepth: 8, runtime_s: 120, size: 48M,
     options: {verify: crc32c, time_based: 0, verify_fatal: 1}}
"""
    spec = parse_spec(yaml.safe_load(text), source=text)
    outcome = run_bench(
        spec,
        facts=check_host(),
        image=guest_image,
        events=events,
        options=BenchOptions(results_root=Path(lab_env["RESULTS"])),
    )
    for thread in events.threads:
        thread.join(timeout=60)
    assert events.killed, "the OSD was never killed"
    assert outcome.ok, outcome.failed  # fio verify_fatal: any corrupt block fails the job
    (result,) = outcome.results
    assert result.metrics["write_iops"] > 0 and result.metrics["read_iops"] > 0  # verify reads
    # some write waited out the outage: the kill really happened under load
    assert result.metrics["write_lat_max_ns"] > 1e9, result.metrics["write_lat_max_ns"]


def test_the_reference_experiment_runs_what_this_host_can_and_reports_it(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
    tmp_path: Path,
) -> None:
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    spec = Path(__file__).parent.parent.parent / "examples" / "reference-experiment.yaml"
    results = Path(lab_env["RESULTS"])
    vmlab = [sys.executable, "-m", "vmlab.cli"]
    done = subprocess.run(
        [
            *vmlab,
            "bench",
            str(spec),
            "--runtime",
            "1",
            "--skip-unsupported",
            "--ci",
            "--results",
            str(results),
        ],
        env=lab_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    spdk, lio = "vhost-user-blk-spdk-rbd-num-queues-2", "vhost-scsi-rbd-krbd-num-queues-2"
    vhost_net = "guest-rbd-vhost-net"  # case 2, from the spec's include:
    assert f"{lio}: unsupported" in done.stdout  # this kernel has no vhost_scsi, LIO or rbd
    assert f"{vhost_net}: unsupported" in done.stdout  # ... nor vhost_net
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    status = json.loads((run / "status.json").read_text())
    ran = [
        "guest-rbd",
        "guest-rbd-krbd",
        "host-baseline",
        "vhost-user-blk-rbd-num-queues-2",
        "virtio-blk-rbd",
    ]
    if find_spdk() is not None and os.geteuid() == 0:  # SPDK built: ../shared/tools/build-spdk
        assert set(status["unsupported"]) == {lio, vhost_net}
        ran.append(spdk)
    else:
        assert set(status["unsupported"]) == {spdk, lio, vhost_net}
    assert sorted(p.name for p in (run / "cases").iterdir()) == sorted(ran)
    assert status["status"] == "complete", status
    job = (run / "cases" / "guest-rbd" / "jobs" / "latency" / "r1" / "job.fio").read_text()
    assert "ioengine=rbd" in job and "filename" not in job

    def initrd(case: str) -> str:
        argv = json.loads((run / "cases" / case / "argv.json").read_text())
        return str(argv[argv.index("-initrd") + 1])

    # fio's rbd engine in the guest needs the real librbd: the full initramfs; krbd runs libaio
    assert initrd("guest-rbd") == str(guest_image.initrd)
    assert initrd("guest-rbd-krbd") == str(guest_image.slim_initrd)
    # 1b: the guest's kernel mapped the image (rbd loaded on demand) and fio ran on the device
    krbd = run / "cases" / "guest-rbd-krbd"
    job = (krbd / "jobs" / "latency" / "r1" / "job.fio").read_text()
    assert "filename=/dev/rbd0" in job and "ioengine=rbd" not in job
    metrics = json.loads((krbd / "jobs" / "latency" / "r1" / "summary.json").read_text())
    assert metrics["metrics"]["read_iops"] > 0
    keyring = (Path(lab_env["VMLAB_STATE"]) / "ceph" / "ceph.client.admin.keyring").read_text()
    secret = keyring.split("key = ")[1].split()[0]
    stored = [p for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert stored == []  # keys never land in results
    report = subprocess.run(
        [*vmlab, "report", str(run), "--out", str(tmp_path / "report")],
        env=lab_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    markdown = next((tmp_path / "report").glob("*.md")).read_text()
    for case in ran:  # 5a (qemu-storage-daemon) and 5b (SPDK) side by side
        assert case in markdown


def test_a_keyring_the_conf_does_not_name_reaches_every_client(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
    tmp_path: Path,
    qemu_pids: Callable[[str], list[int]],
) -> None:
    """A user's cluster given as conf + keyring, where the conf names no keyring (and the key
    is nowhere librados looks by default): QEMU's librbd, qemu-storage-daemon and fio on the
    host all authenticate with the spec's keyring. Before, the keyring reached only libvirt's
    secret and the rbd CLI, and QEMU failed to connect."""
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    info = micro.up()
    conf = tmp_path / "lab.conf"
    conf.write_text(
        "".join(
            line
            for line in info.conf_path.read_text().splitlines(keepends=True)
            if not line.strip().startswith("keyring")
        )
    )
    keyring = tmp_path / "elsewhere.keyring"
    keyring.write_bytes(info.keyring_path.read_bytes())
    keyring.chmod(0o600)
    images = RbdImages(info)
    images.create("vmlab", "keyring-test", 64 << 20)
    try:
        outcome = bench(
            f"""
name: keyring
baseline: true
guest:
  disks:
    - name: data
      model: [virtio-blk, vhost-user-blk]
      backend:
        type: rbd
        image: keyring-test
        cluster: {{conf: {conf}, client_id: admin, keyring: {keyring}}}
jobs:
  - {{name: qd1, rw: randread, runtime_s: 1}}
""",
            Path(lab_env["RESULTS"]),
            guest_image,
        )
        assert outcome.ok, outcome.failed
        assert {r.case_id for r in outcome.results} == {
            "host-baseline",
            "virtio-blk",
            "vhost-user-blk",
        }
        argv = (outcome.run.path / "cases/virtio-blk/argv.sh").read_text()
        assert "key-secret=sec-data" in argv and "format=base64" in argv
        assert qemu_pids(str(outcome.run.path)) == []
        assert list(Path(lab_env["VMLAB_RUNTIME"]).glob("*/rbd-*.key")) == []  # no key left
    finally:
        images.remove("vmlab", "keyring-test")


POOL_RBD_SPEC = """
name: pool-rbd
baseline: true
guest:
  disks:
    - {name: data, model: virtio-blk, cache: directsync,
       backend: {type: rbd, pool: %s, image: seedimg, size: 2G%s}}
jobs:
  - {name: qd1, rw: randread, runtime_s: 1}
"""


def test_a_hand_written_spec_with_pool_rbd_runs_on_the_micro_cluster(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
    qemu_pids: Callable[[str], list[int]],
) -> None:
    """`pool: rbd` (the name every Ceph user types) on vmlab's micro cluster, which has only
    its `vmlab` pool: the run makes the pool, the host baseline and the guest use it, and the
    pool is gone again afterwards. Before, the baseline failed with rbd's "error opening
    default pool 'rbd'"."""
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    outcome = bench(POOL_RBD_SPEC % ("rbd", ""), Path(lab_env["RESULTS"]), guest_image)
    assert outcome.ok, outcome.failed
    assert {r.case_id for r in outcome.results} == {"host-baseline", "default"}
    for result in outcome.results:
        assert result.metrics["read_iops"] > 0, result.case_id
    run = outcome.run.path
    assert "pool=rbd" in (run / "cases/default/argv.sh").read_text()
    job = (run / "cases/host-baseline/jobs/qd1/r1/job.fio").read_text()
    assert "pool=rbd" in job and "rbdname=seedimg" in job
    assert qemu_pids(str(run)) == []
    # the cluster this run started is down again; the pool (and image) it made are gone
    assert not micro.status().running
    micro.up()
    st = micro.status()
    assert st.report is not None, st.problem
    assert "rbd" not in {p.name for p in st.pools} and "vmlab" in {p.name for p in st.pools}
    assert st.images == ()


class Started(QuietEvents):
    """Every case that started and every stage any case reached."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def case_started(self, case: Case, index: int, total: int) -> None:
        self.seen.append(f"start {case.id}")

    def stage(self, case: Case, what: str) -> None:
        self.seen.append(f"{case.id}: {what}")


def test_a_users_cluster_without_the_pool_fails_before_anything_boots(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    micro: MicroCluster,
    qemu_pids: Callable[[str], list[int]],
) -> None:
    """The same spec against a cluster given by conf (a user's cluster, here the micro
    cluster reached as one) that has no pool `rbd`: the run fails naming the pool and the
    cluster, before the host baseline or any guest (no QEMU, no case started), and makes
    nothing on the user's cluster."""
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    info = micro.up()
    cluster = f", cluster: {{conf: {info.conf_path}, keyring: {info.keyring_path}}}"
    text = POOL_RBD_SPEC % ("rbd", cluster)
    events = Started()
    results = Path(lab_env["RESULTS"])
    with pytest.raises(HostError) as caught:
        run_bench(
            parse_spec(yaml.safe_load(text), source=text),
            facts=check_host(),
            image=guest_image,
            events=events,
            options=BenchOptions(results_root=results),
        )
    message = str(caught.value)
    assert "'rbd'" in message and str(info.conf_path) in message, message
    assert "vmlab" in message  # the pools it does have
    assert caught.value.hint is not None and "ceph osd pool create rbd" in caught.value.hint
    assert events.seen == []
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    assert list(run.rglob("argv.sh")) == [] and list(run.rglob("job.fio")) == []
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert qemu_pids(str(run)) == []
    st = micro.status()
    assert st.report is not None, st.problem
    assert "rbd" not in {p.name for p in st.pools}  # nothing made on a user's cluster
