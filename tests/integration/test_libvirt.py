"""The libvirt launcher against a real libvirtd (no systemd), real QEMU under TCG, real fio.

A session fixture starts virtlogd and libvirtd (in the foreground, under vmlab.reaper) if they
are not running (root only) and stops exactly what it started. It never starts a libvirt
network: it refuses to start libvirtd while a network is marked for autostart (Debian's
`default` would come up in the host namespace).
"""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlab import reaper
from vmlab.bench import Bench, BenchOptions, QuietEvents
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.info import read_key
from vmlab.ceph.rbd import RbdImages
from vmlab.errors import LaunchError
from vmlab.guest.cloud import sha256_file
from vmlab.guest.diskimage import build_disk_image
from vmlab.guest.image import GuestImage, authkey_cmdline
from vmlab.guest.rootfs import build_rootfs
from vmlab.guest.ssh import GuestSSH, lab_key, public_line, wait_banner
from vmlab.host import check_host
from vmlab.launch.base import LaunchRequest
from vmlab.launch.direct import free_port
from vmlab.launch.libvirt import LibvirtLauncher
from vmlab.launch.libvirt_api import libvirt_module
from vmlab.launch.libvirt_owner import (
    current_owner,
    lab_secret,
    sweep_stale_domains,
    sweep_stale_secrets,
)
from vmlab.launch.qemu import Deadlines
from vmlab.paths import state_dir
from vmlab.plan import Case, plan
from vmlab.render.libvirt import (
    DomainRuntime,
    Owner,
    rbd_secret_usage,
    render_libvirt,
    render_secret,
)
from vmlab.render.model import BootImage, DiskSource, RbdTarget
from vmlab.results.rundir import RunDir
from vmlab.spec import BenchSpec, parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]

URI = "qemu:///system"
GOLDEN = Path(__file__).parent.parent / "data" / "golden" / "libvirt"
AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart")
DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))


# --- daemons -------------------------------------------------------------------------------
def need(binary: str, package: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is missing: apt-get install {package} (see .ci/run)")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _daemon_pid(name: str, pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name and _alive(pid) else None


def _can_connect() -> bool:
    lv = libvirt_module()
    try:
        lv.open(URI).close()
    except lv.libvirtError:
        return False
    return True


KVM = Path("/dev/kvm")


@contextlib.contextmanager
def kvm_group_as_udev_sets_it() -> Iterator[None]:
    """/dev/kvm in the group ``kvm`` while the tests' libvirtd runs, as Debian's udev rule
    sets it; restored after. libvirtd checks /dev/kvm as its QEMU user (libvirt-qemu, group
    kvm) but probes QEMU's capabilities as root. Where no udev rule ran (containers, this CI
    root: /dev/kvm keeps an outer gid that names another group here) the two disagree, so its
    capability cache is never valid and every domain definition re-probes QEMU: ~9 s each,
    245 s for the acceptance test alone."""
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
        before = KVM.stat().st_gid
    except (KeyError, OSError):
        yield
        return
    if before == kvm_gid:
        yield
        return
    os.chown(KVM, -1, kvm_gid)
    try:
        yield
    finally:
        os.chown(KVM, -1, before)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """A libvirtd answering on qemu:///system; started here (and stopped after) if needed."""
    need("libvirtd", "libvirt-daemon-system")
    need("virsh", "libvirt-clients")
    try:
        libvirt_module()
    except Exception as exc:
        pytest.skip(f"{exc}: pip install libvirt-python (apt-get install libvirt-dev pkg-config)")
    started: list[subprocess.Popen[bytes]] = []
    restore = contextlib.ExitStack()
    try:
        if not _can_connect():
            if os.geteuid() != 0:
                pytest.skip("libvirtd is not running and starting it needs root")
            autostart = sorted(p.name for p in AUTOSTART.glob("*.xml"))
            if autostart:
                pytest.skip(
                    f"libvirtd would autostart network(s) {autostart} in the host namespace: "
                    f"remove {AUTOSTART}/*.xml first (never start it outside a netns)"
                )
            restore.enter_context(kvm_group_as_udev_sets_it())
            for name, pidfile in DAEMONS:
                if _daemon_pid(name, pidfile) is None:
                    # Under a subreaper: PID 1 here reaps nothing, and libvirtd would wait on
                    # each zombie of its QEMU capability probes (minutes on a fresh host).
                    reaped = reaper.spawn([name], log=Path(f"/tmp/vmlab-test-{name}.log"))
                    deadline = time.monotonic() + 15
                    while _daemon_pid(name, pidfile) is None:
                        assert reaped.poll() is None, f"{name} exited: /tmp/vmlab-test-{name}.log"
                        assert time.monotonic() < deadline, f"{name} wrote no {pidfile}"
                        time.sleep(0.1)
                    started.append(reaped)
            deadline = time.monotonic() + 30
            while not _can_connect():
                assert time.monotonic() < deadline, "libvirtd started but does not answer"
                time.sleep(0.2)
        yield URI
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        restore.close()


@pytest.fixture
def conn(libvirtd: str) -> Iterator[Any]:
    connection = libvirt_module().open(libvirtd)
    try:
        yield connection
    finally:
        connection.close()


def leftovers(connection: Any) -> dict[str, list[str]]:
    """vmlab objects libvirt still knows, by API and by `virsh` (what a person would run)."""
    domains = [d.name() for d in connection.listAllDomains(0) if d.name().startswith("vmlab-")]
    secrets = [s.usageID() for s in connection.listAllSecrets(0)]
    virsh_domains = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    virsh_secrets = subprocess.run(
        ["virsh", "-c", URI, "secret-list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return {
        "domains": domains + [n for n in virsh_domains if n.startswith("vmlab-")],
        "secrets": [s for s in secrets if str(s).startswith("vmlab-")]
        + [line for line in virsh_secrets.splitlines() if "vmlab-" in line],
    }


NOTHING = {"domains": [], "secrets": []}


# --- harness -------------------------------------------------------------------------------
def libvirt_spec(text: str) -> BenchSpec:
    text = f"launcher: libvirt\n{text}"
    return parse_spec(yaml.safe_load(text), source=text)


def request_for(
    case: Case, image: GuestImage, tmp_path: Path, deadlines: Deadlines, key_path: Path
) -> tuple[LaunchRequest, str]:
    """A LaunchRequest as Bench builds one (nonce, lab key on the kernel command line)."""
    run = RunDir.create(tmp_path / "results", "harness")
    disk = tmp_path / "data.raw"
    with disk.open("wb") as fh:
        fh.truncate(64 << 20)
    nonce = os.urandom(8).hex()
    cmdline = " ".join(
        [image.cmdline, authkey_cmdline(public_line(lab_key(key_path))), f"vmlab.nonce={nonce}"]
    )
    request = LaunchRequest(
        case=case,
        case_dir=run.case(case.id),
        accel="tcg",
        boot=BootImage(image.kernel, image.initrd, cmdline),
        disks={"data": DiskSource(path=disk)},
        deadlines=deadlines,
        ready_marker=image.ready_marker,
        failed_marker=image.failed_marker,
    )
    return request, nonce


# vhost-user-blk: qemu-storage-daemon serves the disk, guest RAM is a shared memfd
CASES = ("virtio-blk", "virtio-scsi", "nvme", "vhost-user-blk")
ONE_DISK = """
name: lv-one
guest: {memory_mib: 512, cpus: 1, disks: [{name: data, model: virtio-blk}]}
jobs: [{name: j, rw: read, runtime_s: 1}]
"""


# --- tests ---------------------------------------------------------------------------------
def test_every_rendered_document_is_accepted_by_libvirtd(conn: Any, tmp_path: Path) -> None:
    """libvirtd's own parser and post-parse checks (addresses, iothreads, overrides) say yes."""
    documents = [
        p
        for p in sorted(GOLDEN.glob("*/*.xml"))
        if p.parent.name not in ("secret", "libvirt-network")
    ]
    assert documents
    extra = []
    for text, source in (
        (  # a virtio-scsi queue_size: a <qemu:override>
            "{disks: [{model: virtio-scsi, iothread: true, num_queues: 2, queue_size: 256}]}",
            DiskSource(path=tmp_path / "d.raw"),
        ),
        (  # kernel vhost-scsi with queues: a scsi_host hostdev + <qemu:override>
            "{disks: [{model: vhost-scsi, backend: {type: block, path: /dev/rbd1}, "
            "num_queues: 2}]}",
            DiskSource(path=Path("/dev/rbd1"), protocol="host_device", wwpn="naa.5001405abcdef012"),
        ),
    ):
        (case,) = plan(libvirt_spec(f"name: s\nguest: {text}\njobs: [{{name: j, rw: read}}]\n"))
        runtime = DomainRuntime(
            name=f"vmlab-accept-{case.variant.guest.disks[0].model}",
            serial_log=tmp_path / "s.log",
            ssh_port=1,
            owner=Owner("elsewhere", "b", 1, 1, "r", "c"),
        )
        boot = BootImage(Path("/k"), Path("/i"), "c")
        extra.append(
            render_libvirt(
                case, accel="tcg", boot=boot, disks={"data": source}, runtime=runtime
            ).xml
        )
    for index, text in enumerate([p.read_text() for p in documents] + extra):
        domain = conn.defineXML(text.replace("<name>vmlab-", f"<name>vmlab-accept{index}-", 1))
        try:
            assert domain.name().startswith("vmlab-accept")
        finally:
            domain.undefine()
    assert leftovers(conn) == NOTHING


def test_default_lab_through_libvirt_boots_runs_fio_and_leaves_nothing(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str
) -> None:
    spec = libvirt_spec(
        """
name: libvirt-lab
runtime_s: 2
guest:
  memory_mib: 512
  cpus: 2
  disks:
    - name: data
      model: [virtio-blk, virtio-scsi, nvme, vhost-user-blk]
      backend: {type: file, size: 256M}
      num_queues: 2  # qsd exports `num_queues or 1`; the device default is one per vCPU
jobs:
  - {name: mixed, rw: randrw, rwmixread: 90, bs: 4k, iodepth: 4}
"""
    )
    results = Path(lab_env["RESULTS"])
    options = BenchOptions(results_root=results, lab_key_path=Path(lab_env["VMLAB_STATE"]) / "key")
    bench = Bench(spec, facts=check_host(), image=guest_image, options=options)
    bench.launchers["libvirt"] = LibvirtLauncher(libvirtd)
    outcome = bench.run()
    assert outcome.ok, outcome.failed
    assert {r.case_id for r in outcome.results} == set(CASES)
    for result in outcome.results:
        assert result.metrics["read_iops"] > 0 and result.metrics["write_iops"] > 0
    run = outcome.run.path
    for case in CASES:
        cdir = run / "cases" / case
        assert "VMLAB-READY" in (cdir / "serial.log").read_text(errors="replace")
        assert (cdir / "domain.xml").read_text().startswith("<domain type='qemu'")
        live = (cdir / "domain-live.xml").read_text()
        assert f"<name>vmlab-{run.name}-{case}</name>" in live
        assert json.loads((cdir / "kvm.json").read_text())["enabled"] is False  # TCG
        assert "hostfwd=tcp:127.0.0.1:" in (cdir / "qemu.log").read_text()  # libvirt's argv
        facts = (cdir / "guest-facts.txt").read_text()
        assert "0000:00:10.0" in facts  # the disk where the QEMU launcher puts it
        status = json.loads((cdir / "status.json").read_text())
        assert status["status"] == "ok" and status["timings"]["ssh_ready_s"] > 0
        assert not Path(f"/var/log/libvirt/qemu/vmlab-{run.name}-{case}.log").exists()
    assert leftovers(conn) == NOTHING
    assert list(Path(lab_env["VMLAB_SCRATCH"]).iterdir()) == []


def test_both_launchers_side_by_side_in_one_run_and_its_report(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str, tmp_path: Path
) -> None:
    """The same guest under QEMU and under libvirt: two cases of one run, one report."""
    text = """
name: launchers
launcher: [qemu, libvirt]
guest:
  disks: [{name: data, model: virtio-blk, backend: {type: file, size: 64M}}]
jobs:
  - {name: qd4, rw: randrw, rwmixread: 90, bs: 4k, iodepth: 4, runtime_s: 2}
"""
    spec = parse_spec(yaml.safe_load(text), source=text)
    options = BenchOptions(
        results_root=Path(lab_env["RESULTS"]),
        lab_key_path=Path(lab_env["VMLAB_STATE"]) / "key",
    )
    bench = Bench(spec, facts=check_host(), image=guest_image, options=options)
    bench.launchers["libvirt"] = LibvirtLauncher(libvirtd)
    outcome = bench.run()
    assert outcome.ok, outcome.failed
    assert sorted(r.case_id for r in outcome.results) == ["libvirt", "qemu"]
    run = outcome.run.path
    assert (run / "cases" / "qemu" / "argv.json").exists()
    assert (run / "cases" / "libvirt" / "domain.xml").exists()
    report = subprocess.run(
        [sys.executable, "-m", "vmlab.cli", "report", str(run), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    markdown = next((tmp_path / "report").glob("*.md")).read_text()
    assert "qemu" in markdown and "libvirt" in markdown
    assert leftovers(conn) == NOTHING


def _bench(spec: BenchSpec, image: GuestImage, env: dict[str, str], uri: str) -> Bench:
    options = BenchOptions(
        results_root=Path(env["RESULTS"]),
        lab_key_path=Path(env["VMLAB_STATE"]) / "key",
        timeout_scale=2,
    )
    bench = Bench(spec, facts=check_host(), image=image, options=options)
    bench.launchers["libvirt"] = LibvirtLauncher(uri)
    return bench


def test_rbd_through_librbd_keeps_the_key_in_a_libvirt_secret_and_leaves_none(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str
) -> None:
    """A <disk type='network'> on the micro cluster: the key reaches QEMU through an ephemeral
    private secret (never in the XML or QEMU's argv), and the secret is gone afterwards."""
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    micro = MicroCluster(state_dir() / "ceph")
    try:
        spec = libvirt_spec(
            """
name: lv-rbd
runtime_s: 2
guest:
  memory_mib: 512
  disks:
    - {name: data, model: [virtio-blk, virtio-scsi], cache: none, backend: {type: rbd, size: 128M}}
jobs: [{name: qd4, rw: randrw, rwmixread: 70, bs: 4k, iodepth: 4}]
"""
        )
        outcome = _bench(spec, guest_image, lab_env, libvirtd).run()
        assert outcome.ok, outcome.failed
        key = base64.b64encode(
            read_key(micro.state_dir / "ceph.client.admin.keyring", "client.admin")
        ).decode()
        run = outcome.run.path
        for case in ("virtio-blk", "virtio-scsi"):
            result = next(r for r in outcome.results if r.case_id == case)
            assert result.metrics["read_iops"] > 0 and result.metrics["write_iops"] > 0
            cdir = run / "cases" / case
            usage = f"vmlab-{run.name}-{case}-data"
            assert json.loads((cdir / "libvirt.json").read_text())["secrets"] == [usage]
            xml = (cdir / "domain.xml").read_text()
            assert f"<secret type='ceph' usage='{usage}'/>" in xml
            qemu_log = (cdir / "qemu.log").read_text()
            assert "key-secret" in qemu_log  # libvirt handed QEMU the key as a secret object
            for text in (xml, qemu_log, (cdir / "domain-live.xml").read_text()):
                assert key not in text
        assert leftovers(conn) == NOTHING
    finally:
        micro.purge()


def test_a_guest_that_fails_to_boot_leaves_no_rbd_secret_behind(
    guest_image: GuestImage, lab_env: dict[str, str], tmp_path: Path, conn: Any, libvirtd: str
) -> None:
    """Failure path of the secret: defined before the domain, gone after a boot that fails."""
    if not os.access("/usr/bin/ceph-mon", os.X_OK):
        pytest.skip("Ceph is not installed: scripts/setup --dev")
    micro = MicroCluster(state_dir() / "ceph")
    try:
        info = micro.up()
        RbdImages(info).create(info.pool, "fails", 64 << 20)
        (case,) = plan(libvirt_spec(ONE_DISK))
        tiny = Deadlines(qmp_s=5, boot_s=0.2, banner_s=1, login_s=1, powerdown_s=0.5)
        request, _ = request_for(case, guest_image, tmp_path, tiny, tmp_path / "key")
        target = RbdTarget(info.pool, "fails", info.conf_path, info.client_id, info.keyring_path)
        source = DiskSource(path=Path("rbd:x"), protocol="rbd", rbd=target)
        request = replace(request, disks={"data": source})
        with (
            pytest.raises(LaunchError, match="did not print VMLAB-READY within"),
            LibvirtLauncher(libvirtd).launch(request),
        ):
            pytest.fail("the guest cannot be ready within 0.2 s under TCG")
        recorded = json.loads((request.case_dir.path / "libvirt.json").read_text())
        assert recorded["secrets"] == [rbd_secret_usage(recorded["name"], "data")]
        assert leftovers(conn) == NOTHING
    finally:
        micro.purge()


def test_cloud_init_rootfs_guest_through_libvirt_overlay_seed_and_no_leftovers(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str
) -> None:
    """The systemd + cloud-init rootfs as a "cloud image" under libvirt: root overlay and
    NoCloud seed as disks, a reboot allowed, readiness after cloud-init, base untouched."""
    rootfs = build_rootfs(systemd=True, cloud_init=True)  # cached after the first build
    before = sha256_file(rootfs.base)
    spec = libvirt_spec(
        """
name: lv-cloud
guest:
  memory_mib: 1024
  image: {kind: rootfs, systemd: true, cloud_init: true}
  disks: [{name: data, model: virtio-blk, backend: {type: file, size: 64M}}]
jobs:
  - {name: qd4, rw: randrw, iodepth: 4, runtime_s: 2}
"""
    )
    outcome = _bench(spec, guest_image, lab_env, libvirtd).run()
    assert outcome.ok, outcome.failed
    (result,) = outcome.results
    assert result.metrics["read_iops"] > 0
    cdir = outcome.run.path / "cases" / "default"
    live = ET.fromstring((cdir / "domain-live.xml").read_text())
    assert live.findtext("on_reboot") == "restart"
    serials = {d.findtext("serial"): d for d in live.iterfind("devices/disk")}
    assert serials["vmlab-seed"].find("readonly") is not None
    assert serials["vmlab-root"].find("driver").attrib["type"] == "qcow2"
    assert json.loads((cdir / "cloud-init.json").read_text())
    facts = json.loads((cdir / "guest.json").read_text())
    assert "Debian" in facts["distro"]
    assert "vmlab-data" in [d["serial"] for d in facts["disks"].values()]
    assert sha256_file(rootfs.base) == before
    assert leftovers(conn) == NOTHING


def test_a_firmware_booted_cloud_image_through_both_launchers(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str
) -> None:
    """A cloud image as they come: MBR, boot loader, its own kernel (`vmlab image build --kind
    rootfs --cloud-init --disk`). SeaBIOS boots it from the overlay under QEMU and under
    libvirt; the seed configures it; fio runs; the image file is never written."""
    rootfs = build_rootfs(systemd=True, cloud_init=True)
    disk = build_disk_image(rootfs)
    digest = sha256_file(disk)
    spec = parse_spec(
        yaml.safe_load(
            f"""
name: fw-cloud
launcher: [qemu, libvirt]
guest:
  memory_mib: 1024
  image: {{kind: cloud, source: "{disk}", sha256: "{digest}"}}
  disks: [{{name: data, model: virtio-blk, backend: {{type: file, size: 64M}}}}]
jobs:
  - {{name: qd4, rw: randrw, iodepth: 4, runtime_s: 2}}
"""
        )
    )
    outcome = _bench(spec, guest_image, lab_env, libvirtd).run()
    assert outcome.ok, outcome.failed
    assert sorted(r.case_id for r in outcome.results) == ["libvirt", "qemu"]
    run = outcome.run.path
    for case in ("qemu", "libvirt"):
        cdir = run / "cases" / case
        serial = (cdir / "serial.log").read_text(errors="replace")
        assert "SYSLINUX" in serial  # the image's own boot loader ran: firmware boot
        facts = json.loads((cdir / "guest.json").read_text())
        assert facts["kernel"] == rootfs.kernel_version
        assert json.loads((cdir / "cloud-init.json").read_text())
    argv = json.loads((run / "cases" / "qemu" / "argv.json").read_text())
    assert "-kernel" not in argv and "bootindex=0" in " ".join(argv)
    domain = ET.fromstring((run / "cases" / "libvirt" / "domain-live.xml").read_text())
    assert domain.find("os/kernel") is None
    root = next(d for d in domain.iterfind("devices/disk") if d.findtext("serial") == "vmlab-root")
    assert root.find("boot").attrib["order"] == "1"
    assert sha256_file(disk) == digest
    assert leftovers(conn) == NOTHING


def _host_links() -> dict[str, list[str]]:
    """Links in the host namespace, with their addresses (IPv4 and IPv6)."""
    out = subprocess.run(
        ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True, timeout=30
    )
    return {
        link["ifname"]: [a["local"] for a in link.get("addr_info", [])]
        for link in json.loads(out.stdout)
    }


def test_lab_nics_through_libvirt_bridge_and_direct_run_iperf3_and_leave_nothing(
    guest_image: GuestImage, lab_env: dict[str, str], conn: Any, libvirtd: str
) -> None:
    """<interface type='bridge'> and type='direct' (macvtap) on the lab network's host-side
    ports: iperf3 against the peer in the lab namespace, no address ever on a host link."""
    before = _host_links()
    seen: dict[str, list[str]] = {}

    class Watch(QuietEvents):
        def stage(self, case: Case, what: str) -> None:
            if what.startswith(("fio", "iperf3")):  # the guest is up: what the host has now
                seen.update({k: v for k, v in _host_links().items() if k not in before})

    spec = libvirt_spec(
        """
name: lv-net
guest:
  memory_mib: 512
  nics: [[{name: lab0, attach: tap, queues: 2}], [{name: lab0, attach: macvtap}]]
jobs:
  - {name: qd1, rw: randread, runtime_s: 1}
net_jobs:
  - {name: tx, nic: lab0, duration_s: 2}
"""
    )
    bench = _bench(spec, guest_image, lab_env, libvirtd)
    bench.events = Watch()
    outcome = bench.run()
    assert outcome.ok, outcome.failed
    got = {(r.case_id, r.job): r.metrics for r in outcome.results}
    run = outcome.run.path
    for case, kind in (("tap-queues-2", "bridge"), ("macvtap", "direct")):
        assert got[(case, "tx")]["received_bits_per_s"] > 1e6, case
        live = ET.fromstring((run / "cases" / case / "domain-live.xml").read_text())
        (iface,) = live.iterfind("devices/interface")
        assert iface.attrib["type"] == kind
        record = json.loads((run / "cases" / case / "network.json").read_text())
        assert iface.find("mac").attrib["address"] == record["nics"][0]["mac"]
        if case == "tap-queues-2":  # what libvirt accepted, not only what vmlab rendered
            assert iface.find("driver").attrib["queues"] == "2"
    host_side = {k: v for k, v in seen.items() if k.startswith(("lb-", "lh-", "lm-"))}
    assert host_side, f"no host-side lab port seen while a guest ran: {sorted(seen)}"
    assert all(addrs == [] for addrs in host_side.values()), host_side
    assert _host_links().keys() == before.keys()
    assert leftovers(conn) == NOTHING


@pytest.fixture
def loopback_sshd(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A real sshd on 127.0.0.1 only: (port, client key, known_hosts) for a qemu+ssh:// URI."""
    need("/usr/sbin/sshd", "openssh-server")
    work = tmp_path / "sshd"
    work.mkdir()
    host_key, client_key = work / "host_key", work / "client_key"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=30,
        )
    (work / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    known_hosts = work / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {host_key}\n"
        f"PidFile {work / 'sshd.pid'}\nAuthorizedKeysFile {work / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with (work / "sshd.log").open("wb") as log_file:
        sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_banner("127.0.0.1", port, timeout_s=30)
        yield port, client_key, known_hosts
    finally:
        os.killpg(sshd.pid, signal.SIGTERM)
        sshd.wait(timeout=30)


def test_a_qemu_ssh_uri_reaches_libvirtd_through_real_ssh(
    guest_image: GuestImage,
    tmp_path: Path,
    conn: Any,
    libvirtd: str,
    loopback_sshd: tuple[int, Path, Path],
) -> None:
    """The connection URI is the user's: over SSH to this host (libvirt's libssh client with a
    pinned known_hosts, virt-ssh-helper on the far side) a guest boots, serves SSH and is
    cleaned up as with qemu:///system. (qemu+ssh:// runs OpenSSH, which would pin the host
    key in root's own ~/.ssh/known_hosts: not something a test may touch.)"""
    port, key, known_hosts = loopback_sshd
    uri = (
        f"qemu+libssh://root@127.0.0.1:{port}/system?keyfile={key}&known_hosts={known_hosts}"
        "&sshauth=privkey"
    )
    (case,) = plan(libvirt_spec(ONE_DISK))
    deadlines = Deadlines.for_accel("tcg")
    request, _ = request_for(case, guest_image, tmp_path, deadlines, tmp_path / "key")
    launcher = LibvirtLauncher(uri)
    with launcher.launch(request) as vm:
        wait_banner(vm.ssh_host, vm.ssh_port, timeout_s=deadlines.banner_s)
        assert vm.name in [d.name() for d in conn.listAllDomains(0) if d.isActive()]
    recorded = json.loads((request.case_dir.path / "libvirt.json").read_text())
    assert recorded["uri"] == uri
    assert "Accepted publickey for root" in (key.parent / "sshd.log").read_text()
    assert leftovers(conn) == NOTHING


def test_readiness_timeout_leaves_nothing_behind(
    guest_image: GuestImage, tmp_path: Path, conn: Any, libvirtd: str
) -> None:
    (case,) = plan(libvirt_spec(ONE_DISK))
    tiny = Deadlines(qmp_s=5, boot_s=0.2, banner_s=1, login_s=1, powerdown_s=0.5)
    request, _ = request_for(case, guest_image, tmp_path, tiny, tmp_path / "key")
    with (
        pytest.raises(LaunchError, match="did not print VMLAB-READY within"),
        LibvirtLauncher(libvirtd).launch(request),
    ):
        pytest.fail("the guest cannot be ready within 0.2 s under TCG")
    assert (request.case_dir.path / "domain.xml").exists()
    assert (request.case_dir.path / "qemu.log").exists()
    assert leftovers(conn) == NOTHING


def test_ctrl_c_inside_a_running_guest_leaves_nothing_behind(
    guest_image: GuestImage, tmp_path: Path, conn: Any, libvirtd: str
) -> None:
    """The harness path without Bench: SSH in with the pinned key, then KeyboardInterrupt."""
    (case,) = plan(libvirt_spec(ONE_DISK))
    deadlines = Deadlines.for_accel("tcg")
    request, nonce = request_for(case, guest_image, tmp_path, deadlines, tmp_path / "key")
    with (
        pytest.raises(KeyboardInterrupt),
        LibvirtLauncher(libvirtd).launch(request) as vm,
    ):
        wait_banner(vm.ssh_host, vm.ssh_port, timeout_s=deadlines.banner_s)
        with GuestSSH.connect(
            vm.ssh_host,
            vm.ssh_port,
            user=guest_image.user,
            key=lab_key(tmp_path / "key"),
            host_key=guest_image.host_key,
            timeout_s=deadlines.login_s,
        ) as ssh:
            assert f"vmlab.nonce={nonce}" in ssh.run("cat /proc/cmdline", timeout_s=30).text
            assert ssh.run("cat /sys/block/vda/serial", timeout_s=30).text.strip() == "vmlab-data"
        assert vm.name in [d.name() for d in conn.listAllDomains(0) if d.isActive()]
        raise KeyboardInterrupt
    serial = (request.case_dir.path / "serial.log").read_text(errors="replace")
    assert "power button: powering off" in serial  # graceful: ACPI, not destroy
    assert leftovers(conn) == NOTHING


def _dead_owner(tmp_path: Path) -> Owner:
    """The owner record of a vmlab process that has exited (a crashed run)."""
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    me = current_owner("crashed-run", "c")
    return Owner(me.host, me.boot_id, proc.pid, 1, "crashed-run", "c")


def test_sweep_removes_only_domains_and_secrets_of_dead_owners(
    conn: Any, tmp_path: Path, libvirtd: str
) -> None:
    (case,) = plan(libvirt_spec(ONE_DISK))

    def define(name: str, owner: Owner) -> Any:
        runtime = DomainRuntime(
            name=name, serial_log=tmp_path / f"{name}.log", ssh_port=1, owner=owner
        )
        xml = render_libvirt(
            case,
            accel="tcg",
            boot=BootImage(Path("/k"), Path("/i"), "c"),
            disks={"data": DiskSource(path=tmp_path / "d.raw")},
            runtime=runtime,
        ).xml
        return conn.defineXML(xml)

    dead, live = _dead_owner(tmp_path), current_owner("live-run", "c")
    other_host = Owner("another-host", "b", 1, 1, "r", "c")
    define("vmlab-sweep-dead", dead)
    keep = [define("vmlab-sweep-live", live), define("vmlab-sweep-other", other_host)]
    unowned = conn.defineXML(
        "<domain type='qemu'><name>vmlab-sweep-unowned</name><memory>262144</memory>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    )
    keep.append(unowned)
    stale_secret = conn.secretDefineXML(
        render_secret(
            usage_name="vmlab-sweep-dead-data",
            description="vmlab-owner "
            + json.dumps(
                {
                    "host": dead.host,
                    "boot_id": dead.boot_id,
                    "pid": dead.pid,
                    "start_ticks": 1,
                    "run": "crashed-run",
                    "case": "c",
                }
            ),
        ),
        0,
    )
    try:
        with lab_secret(
            conn, usage_name="vmlab-sweep-live-data", value=b"AQ==", owner=live
        ) as uuid:
            removed = sweep_stale_domains(conn)
            assert "vmlab-sweep-dead" in removed
            assert not {"vmlab-sweep-live", "vmlab-sweep-other", "vmlab-sweep-unowned"} & set(
                removed
            )
            removed_secrets = sweep_stale_secrets(conn)
            assert "vmlab-sweep-dead-data" in removed_secrets
            assert "vmlab-sweep-live-data" not in removed_secrets
            names = {d.name() for d in conn.listAllDomains(0)}
            assert {"vmlab-sweep-live", "vmlab-sweep-other", "vmlab-sweep-unowned"} <= names
            assert "vmlab-sweep-dead" not in names
            assert conn.secretLookupByUUIDString(uuid).usageID() == "vmlab-sweep-live-data"
            lv = libvirt_module()
            with pytest.raises(lv.libvirtError):  # private: never readable through the API
                conn.secretLookupByUUIDString(uuid).value(0)
        assert [s for s in conn.listAllSecrets(0) if s.usageID().startswith("vmlab-sweep")] == []
    finally:
        for domain in keep:
            domain.undefine()
        try:
            stale_secret.undefine()
        except libvirt_module().libvirtError:
            pass  # swept, as it should be
    assert leftovers(conn) == NOTHING


def test_a_stopped_daemon_is_one_clear_launch_error(tmp_path: Path) -> None:
    launcher = LibvirtLauncher("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    try:
        libvirt_module()
    except Exception as exc:
        pytest.skip(f"{exc}: pip install libvirt-python")
    with (
        pytest.raises(LaunchError, match="cannot connect to libvirt") as info,
        launcher.connection(),
    ):
        pass
    assert "libvirtd -d" in (info.value.hint or "")
