"""A real micro Ceph cluster (ceph-mon, ceph-mgr, ceph-osd from Debian) and QEMU's rbd driver.

One cluster serves the whole module; tests that stop or kill daemons bring it back with `up`.
Two more short-lived clusters check purge (with the context-manager form) and a network
namespace. Nothing is left behind: every cluster is purged and every temp dir removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmlab.ceph.cluster import ClusterInfo, MicroCluster
from vmlab.ceph.proc import INSTALL_HINT
from vmlab.ceph.rbd import RbdImages
from vmlab.cli.ceph import app
from vmlab.errors import HostError, VmlabError

pytestmark = pytest.mark.integration

MIB = 1 << 20
SMALL_OSD = 3 << 30  # sparse; what is written is all it costs


def need_ceph() -> None:
    for binary in ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "rbd"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is missing: {INSTALL_HINT}")
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is missing: apt-get install qemu-utils qemu-block-extra")


def live_ceph_pids(text: str) -> list[int]:
    """ceph-* processes (not zombies) whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"ceph-" in cmdline and text.encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@dataclass
class Lab:
    cluster: MicroCluster
    info: ClusterInfo
    root: Path


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[Lab]:
    need_ceph()
    root = Path(tempfile.mkdtemp(prefix="vmlab-ceph-it-"))
    cluster = MicroCluster(root / "ceph", osd_size_bytes=SMALL_OSD)
    try:
        yield Lab(cluster, cluster.up(timeout_s=120), root)
    finally:
        try:
            cluster.purge()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def run(argv: list[str], netns: str | None = None) -> subprocess.CompletedProcess[bytes]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, *argv], capture_output=True, timeout=120, check=True, stdin=subprocess.DEVNULL
    )


def write_pattern(info: ClusterInfo, image: str, tmp: Path, size: int = 4 * MIB) -> bytes:
    """Write random bytes at offset 0 through QEMU's rbd driver (librbd)."""
    data = os.urandom(size)
    src = tmp / f"{image}.pattern"
    src.write_bytes(data)
    uri = info.qemu_rbd_uri(info.pool, image)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri], info.netns)
    return data


def read_back(info: ClusterInfo, image: str, size: int) -> bytes:
    """Read the image through the rbd CLI (a different client than the writer)."""
    out = run(["rbd", *info.ceph_args(), "export", "--no-progress", f"{info.pool}/{image}", "-"])
    return out.stdout[:size]


def qemu_compare(info: ClusterInfo, image: str, pattern: Path) -> None:
    """qemu-img compare exits 0 when the image starts with the pattern (and is zero after)."""
    uri = info.qemu_rbd_uri(info.pool, image)
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(pattern), uri], info.netns)


def daemon_pids(cluster: MicroCluster) -> dict[str, int | None]:
    return {d.name: d.pid for d in cluster.status().daemons}


def test_fresh_cluster_is_healthy_and_serves_an_image(ceph_lab: Lab, tmp_path: Path) -> None:
    st = ceph_lab.cluster.status()
    assert st.running, st
    states = {d.name: d.state for d in st.daemons}
    assert states["mon.a"] == "leader"
    assert states["osd.0"] == "active"
    for d in st.daemons:
        environ = Path(f"/proc/{d.pid}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_ARENA_MAX=2" in environ, d.name
    assert st.report is not None
    assert st.report.health in ("HEALTH_OK", "HEALTH_WARN")
    assert not any("NO_REDUNDANCY" in c or "POOL_" in c for c in st.report.health_checks)
    pool = next(p for p in st.report.pools if p.name == "vmlab")
    assert (pool.size, pool.min_size) == (1, 1)
    assert "rbd" in pool.applications

    assert ceph_lab.info.client_id == "admin"
    assert ceph_lab.info.conf_path.is_file()
    assert ceph_lab.info.keyring_path.stat().st_mode & 0o777 == 0o600
    assert ceph_lab.info.mon_addr.startswith("[v2:127.0.0.1:")

    ref = ceph_lab.cluster.ensure_image("vmlab", "it-fresh", 16 * MIB)
    assert (ref.pool, ref.name, ref.size_bytes) == ("vmlab", "it-fresh", 16 * MIB)
    data = write_pattern(ceph_lab.info, "it-fresh", tmp_path)
    assert read_back(ceph_lab.info, "it-fresh", len(data)) == data
    assert "vmlab/it-fresh" in {i.spec for i in ceph_lab.cluster.status().images}


def test_status_without_the_mgr_still_reports_and_up_restarts_it(ceph_lab: Lab) -> None:
    mgr = next(d for d in ceph_lab.cluster.status().daemons if d.name == "mgr.x")
    assert mgr.pid is not None
    os.kill(mgr.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while mgr.pid in live_ceph_pids(str(ceph_lab.info.conf_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = ceph_lab.cluster.status()
    assert not {d.name: d for d in st.daemons}["mgr.x"].alive
    assert st.report is not None, st.problem  # the mon answers; `ceph df` (mgr) is skipped
    assert "vmlab" in {p.name for p in st.pools}
    ceph_lab.cluster.up()
    assert ceph_lab.cluster.status().running


def test_keys_stay_out_of_logs_and_reprs(ceph_lab: Lab) -> None:
    key = next(
        line.split("=", 1)[1].strip()
        for line in ceph_lab.info.keyring_path.read_text().splitlines()
        if line.strip().startswith("key")
    )
    assert key not in repr(ceph_lab.info)
    assert key not in repr(ceph_lab.cluster.status())
    for log in (ceph_lab.root / "ceph" / "log").iterdir():
        assert key not in log.read_text(errors="replace"), log
    for keyring in (ceph_lab.root / "ceph").rglob("*keyring*"):
        assert keyring.stat().st_mode & 0o777 == 0o600, keyring


def test_up_on_a_running_cluster_is_a_no_op(ceph_lab: Lab) -> None:
    before = daemon_pids(ceph_lab.cluster)
    assert ceph_lab.cluster.up() == ceph_lab.info
    assert daemon_pids(ceph_lab.cluster) == before


def test_down_and_up_keep_the_data(ceph_lab: Lab, tmp_path: Path) -> None:
    ceph_lab.cluster.ensure_image("vmlab", "it-restart", 8 * MIB)
    data = write_pattern(ceph_lab.info, "it-restart", tmp_path)
    ceph_lab.cluster.down()
    st = ceph_lab.cluster.status()
    assert not any(d.alive for d in st.daemons)
    assert live_ceph_pids(str(ceph_lab.info.conf_path)) == []
    assert ceph_lab.cluster.up() == ceph_lab.info
    assert ceph_lab.cluster.status().running
    assert read_back(ceph_lab.info, "it-restart", len(data)) == data


def test_a_killed_osd_is_seen_dead_and_restarted_with_its_data(
    ceph_lab: Lab, tmp_path: Path
) -> None:
    ceph_lab.cluster.ensure_image("vmlab", "it-kill", 8 * MIB)
    data = write_pattern(ceph_lab.info, "it-kill", tmp_path)
    osd = next(d for d in ceph_lab.cluster.status().daemons if d.name == "osd.0")
    assert osd.pid is not None
    os.kill(osd.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while osd.pid in live_ceph_pids(str(ceph_lab.info.conf_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = {d.name: d for d in ceph_lab.cluster.status().daemons}
    assert not after["osd.0"].alive  # judged by /proc state and the admin socket, not the map
    assert after["mon.a"].alive

    ceph_lab.cluster.up()
    restarted = {d.name: d for d in ceph_lab.cluster.status().daemons}["osd.0"]
    assert restarted.alive
    assert restarted.pid != osd.pid
    # librbd right after the restart: would stall on the old OSD address if up returned early
    (tmp_path / "it-kill.pattern").write_bytes(data)
    qemu_compare(ceph_lab.info, "it-kill", tmp_path / "it-kill.pattern")


def test_remove_only_what_vmlab_made(ceph_lab: Lab, tmp_path: Path) -> None:
    images = RbdImages(ceph_lab.info)
    images.create("vmlab", "it-own", 8 * MIB)
    data = write_pattern(ceph_lab.info, "it-own", tmp_path)
    assert read_back(ceph_lab.info, "it-own", len(data)) == data

    run(["rbd", *ceph_lab.info.ceph_args(), "create", "--size", "4", "vmlab/it-foreign"])
    with pytest.raises(VmlabError, match="not created by vmlab"):
        images.remove("vmlab", "it-foreign")

    images.remove("vmlab", "it-own")
    assert images.get("vmlab", "it-own") is None
    assert images.get("vmlab", "it-foreign") is not None
    registry = json.loads((ceph_lab.cluster.state_dir / "images.json").read_text())
    assert ("vmlab", "it-own") not in {(i["pool"], i["name"]) for i in registry["images"]}


def test_krbd_maps_or_says_why_not(ceph_lab: Lab) -> None:
    images = RbdImages(ceph_lab.info)
    images.ensure("vmlab", "it-krbd", 8 * MIB)
    try:
        device = images.map_krbd("vmlab", "it-krbd")
    except HostError as exc:
        assert not Path("/sys/bus/rbd").exists()
        assert "modprobe rbd" in str(exc)
        assert exc.hint is not None
        assert "qemu_rbd_uri" in exc.hint
        return
    try:
        assert device.is_block_device()
    finally:
        images.unmap_krbd(device)


def test_cli_status_prints_daemons_health_pools_and_conf(ceph_lab: Lab) -> None:
    result = CliRunner().invoke(app, ["status", "--state-dir", str(ceph_lab.cluster.state_dir)])
    assert result.exit_code == 0, result.output
    for text in ("mon.a", "mgr.x", "osd.0", "HEALTH_", "vmlab", str(ceph_lab.info.conf_path)):
        assert text in result.output


def test_context_manager_then_purge_leaves_no_process_and_no_file(ceph_lab: Lab) -> None:
    root = Path(tempfile.mkdtemp(prefix="vmlab-ceph-purge-"))
    cluster = MicroCluster(root / "ceph", osd_size_bytes=SMALL_OSD)
    try:
        with cluster as info:
            # a second cluster beside the module's: its monitor takes other ports
            assert info.mon_addr != ceph_lab.info.mon_addr
            assert len(live_ceph_pids(str(root))) == 3
            cluster.ensure_image(info.pool, "it-cm", 4 * MIB)
        assert live_ceph_pids(str(root)) == []  # down on leaving the block
        assert (root / "ceph" / "osd" / "ceph-0" / "block").exists()
        cluster.purge()
        assert live_ceph_pids(str(root)) == []
        assert not (root / "ceph").exists()
    finally:
        cluster.purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.root
def test_cluster_inside_a_network_namespace(tmp_path: Path) -> None:
    need_ceph()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns add) to make a network namespace")
    netns = f"vmlab-ceph-it-{os.getpid()}"
    addr = "10.231.7.1"  # exists only inside the namespace
    root = Path(tempfile.mkdtemp(prefix="vmlab-ceph-ns-"))
    run(["ip", "netns", "add", netns])
    try:
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "-n", netns, "addr", "add", f"{addr}/32", "dev", "lo"])
        cluster = MicroCluster(root / "ceph", bind_addr=addr, netns=netns, osd_size_bytes=SMALL_OSD)
        try:
            info = cluster.up(timeout_s=120)
            assert info.netns == netns
            assert info.mon_addr == f"[v2:{addr}:3300,v1:{addr}:6789]"
            ns_inode = Path(f"/run/netns/{netns}").stat().st_ino
            st = cluster.status()
            assert st.running
            for d in st.daemons:
                assert Path(f"/proc/{d.pid}/ns/net").stat().st_ino == ns_inode, d.name
            host_addrs = run(["ip", "-o", "addr"]).stdout.decode()
            assert addr not in host_addrs

            cluster.ensure_image(info.pool, "it-ns", 8 * MIB)
            data = write_pattern(info, "it-ns", tmp_path)  # qemu-img runs in the namespace
            qemu_compare(info, "it-ns", tmp_path / "it-ns.pattern")
            assert len(data) == 4 * MIB
            # a later handle without --netns finds the namespace in cluster.json
            assert MicroCluster(root / "ceph").info().netns == netns
        finally:
            cluster.purge()
        assert live_ceph_pids(str(root)) == []
        assert not (root / "ceph").exists()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
