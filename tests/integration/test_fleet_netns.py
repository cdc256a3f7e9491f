"""`vmlab fleet run` for real: Ansible over SSH to two hosts in network namespaces.

Each host is a namespace with its own sshd (testhosts.py, beside this file); behind SSH it is
this machine, so the vmlab the playbook runs is this environment's and both hosts boot real TCG
guests at once: the spec is tiny and every deadline doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testhosts import SSHD, TestHosts

from vmlab.guest.image import GuestImage
from vmlab.results.index import list_runs
from vmlab.results.rundir import scan_run

pytestmark = [pytest.mark.integration, pytest.mark.root]

BIN = Path(sys.executable).parent
SPEC = """\
name: fleet-tiny
runtime_s: 1
guest:
  memory_mib: 512
  cpus: 1
  disks:
    - name: data
      model: virtio-blk
      backend: {type: file, format: raw, size: 64M}
jobs:
  - {name: randread, disk: data, rw: randread, bs: 4k, iodepth: 1}
"""
FLEET_TIMEOUT_S = 900


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd): run the tests as root")
    if shutil.which("ip") is None:
        pytest.skip("ip is missing: apt-get install iproute2")
    if not SSHD.is_file():
        pytest.skip(
            f"{SSHD} is missing: apt-get install --no-install-recommends openssh-server "
            "(scripts/setup --dev)"
        )
    if shutil.which("ssh") is None:
        pytest.skip("ssh is missing: apt-get install openssh-client")
    pytest.importorskip("ansible_runner", reason="pip install 'vmlab[fleet]'")
    if not (BIN / "ansible-playbook").exists() or not (BIN / "vmlab").exists():
        pytest.skip(f"ansible-playbook or vmlab missing in {BIN}: pip install -e '.[fleet]'")


FLEET = [sys.executable, "-m", "vmlab.cli", "fleet"]


def write_inventory(hosts: TestHosts, root: Path) -> Path:
    """Per host: its own vmlab state, runtime, scratch and remote folders under root/<host>/."""
    inventory = root / "inventory.json"
    inventory.write_text(json.dumps(hosts.vmlab_inventory(root, vmlab_bin=BIN / "vmlab")))
    return inventory


@pytest.fixture
def fleet_hosts(guest_image: GuestImage) -> Iterator[TestHosts]:
    _require()
    with TestHosts(["hv-a", "hv-b"]) as hosts:
        yield hosts


def fleet_run(root: Path, inventory: Path, *extra: str) -> subprocess.Popen[str]:
    spec = root / "tiny.yaml"
    spec.write_text(SPEC)
    return subprocess.Popen(
        [
            *FLEET,
            "run",
            "-i",
            str(inventory),
            str(spec),
            "--results",
            str(root / "results"),
            "--timeout-scale",
            "2",
            "--ci",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = FLEET_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def only_run(results: Path) -> Path:
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return run


def vmlab(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_fleet_run_merges_two_hosts_into_one_run(
    fleet_hosts: TestHosts, tmp_path: Path, qemu_pids: Callable[[str], list[int]]
) -> None:
    inventory = write_inventory(fleet_hosts, tmp_path)
    rc, out, err = finish(fleet_run(tmp_path, inventory))
    assert rc == 0, out + err
    assert "Traceback" not in out + err
    assert "report: vmlab report" in out

    run = only_run(tmp_path / "results")
    record = scan_run(run)
    assert [c.case_id for c in record.cases] == ["hv-a_default", "hv-b_default"]
    assert {c.params["host"] for c in record.cases} == {"hv-a", "hv-b"}
    cells = record.cells()
    for host in ("hv-a", "hv-b"):
        assert cells[(f"{host}_default", "randread")]["read_iops"][0] > 0
        case = json.loads((run / "cases" / f"{host}_default" / "case.json").read_text())
        assert case["host_case_id"] == "default" and case["params"]["host"] == host
        facts = json.loads((run / "hosts" / f"{host}.json").read_text())
        assert facts["accel"] in ("kvm", "tcg")
        assert "randread r1" in (run / "hosts" / host / "bench.log").read_text()
        junit = (run / "hosts" / host / "junit.xml").read_text()
        assert 'classname="default" name="randread"' in junit and "<failure" not in junit
    fleet = json.loads((run / "fleet.json").read_text())
    assert [(h["host"], h["status"]) for h in fleet["hosts"]] == [("hv-a", "ok"), ("hv-b", "ok")]
    assert json.loads((run / "spec.json").read_text())["name"] == "fleet-tiny"
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert (run / "ansible" / "artifacts" / "bench" / "stdout").is_file()
    assert not (run / ".fetch").exists()
    # indexed
    (row,) = list_runs(tmp_path / "results" / "index.sqlite")
    assert row.id == run.name and row.cases == 2 and row.samples == 2

    report = vmlab("report", str(run), "--format", "csv,json")
    assert report.returncode == 0, report.stdout + report.stderr
    csv = (run / "report" / "report.csv").read_text()
    assert "hv-a_default" in csv and "hv-b_default" in csv and "host=hv-b" in csv
    views = json.loads((run / "report" / "report.json").read_text())["runs"][0]["cases"]
    assert [(c["id"], c["params"]["host"]) for c in views] == [
        ("hv-a_default", "hv-a"),
        ("hv-b_default", "hv-b"),
    ]

    junit = tmp_path / "junit.xml"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - read_iops:-50%\n")
    compared = vmlab(
        "compare", str(run), "--baseline", str(run), "--rules", str(rules), "--junit", str(junit)
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert junit.read_text().count("<testcase") == 2  # one rule x two host cells

    # the remote copies are removed, nothing is left running
    for host in ("hv-a", "hv-b"):
        assert list((tmp_path / host / "remote").iterdir()) == []
        assert list((tmp_path / host / "runtime").iterdir()) == []
    assert qemu_pids(str(tmp_path)) == []


def test_an_unreachable_host_is_reported_and_the_other_is_kept(
    fleet_hosts: TestHosts, tmp_path: Path, qemu_pids: Callable[[str], list[int]]
) -> None:
    inventory = write_inventory(fleet_hosts, tmp_path)
    proc = fleet_run(tmp_path, inventory)
    try:
        # wait until hv-b's vmlab bench runs, then take hv-b off the network (all its sshd)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not _bench_running(fleet_hosts, "hv-b"):
            assert proc.poll() is None, "fleet run ended before hv-b's bench started"
            time.sleep(0.2)
        assert _bench_running(fleet_hosts, "hv-b"), "hv-b's vmlab bench never started"
        assert fleet_hosts.kill_sshd("hv-b")
        rc, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 1, out + err
    assert "Traceback" not in out + err
    assert "1 of 2 hosts failed: hv-b" in err
    assert "hv-b: unreachable" in err

    run = only_run(tmp_path / "results")
    fleet = {h["host"]: h for h in json.loads((run / "fleet.json").read_text())["hosts"]}
    assert fleet["hv-a"]["status"] == "ok" and fleet["hv-a"]["error"] is None
    assert fleet["hv-b"]["status"] == "unreachable"
    assert "Run vmlab bench" in fleet["hv-b"]["error"]
    assert fleet["hv-b"]["cases"] == []
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and list(status["failed_hosts"]) == ["hv-b"]
    # hv-a's results are whole
    record = scan_run(run)
    assert [c.case_id for c in record.cases] == ["hv-a_default"]
    assert record.cells()[("hv-a_default", "randread")]["read_iops"][0] > 0
    assert json.loads((run / "spec.json").read_text())["name"] == "fleet-tiny"

    # what hv-b's vmlab started dies with it (the test hosts stop what is left in hv-b)
    fleet_hosts.close()
    assert qemu_pids(str(tmp_path)) == []


def _bench_running(hosts: TestHosts, name: str) -> bool:
    for pid in hosts.pids(name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"vmlab") for a in argv) and b"bench" in argv:
            return True
    return False


def test_host_prepare_runs_and_is_idempotent(guest_image: GuestImage, tmp_path: Path) -> None:
    """host-prepare.yml on a namespace host: bridge with an address and a port (inside the
    namespace), Ceph client files, image build (cached), host check; packages and the vmlab
    install are skipped (this machine has them); hugepages and VFIO are host-global, not run."""
    _require()
    with TestHosts(["hv-a"]) as hosts:
        host = hosts.hosts[0]
        subprocess.run(
            ["ip", "-n", host.netns, "link", "add", "vport0", "type", "veth", "peer", "vport1"],
            check=True,
            timeout=15,
        )
        ceph_conf = tmp_path / "ceph.conf"
        ceph_conf.write_text("[global]\nmon host = 10.233.0.1\n")
        keyring = tmp_path / "keyring"
        keyring.write_text("[client.admin]\nkey = not-a-real-key\n")
        inventory = tmp_path / "inventory.json"
        inventory.write_text(
            json.dumps(
                hosts.inventory(
                    group_vars={
                        "ansible_become": False,
                        "vmlab_bin": str(BIN / "vmlab"),
                        "vmlab_manage_packages": False,
                        "vmlab_install": False,
                        "vmlab_bridges": [
                            {"name": "vmlbr0", "address": "10.233.0.1/24", "ports": ["vport0"]}
                        ],
                        "vmlab_ceph_conf": str(ceph_conf),
                        "vmlab_ceph_keyring": str(keyring),
                        "vmlab_ceph_dir": str(tmp_path / "etc-ceph"),
                    }
                )
            )
        )
        argv = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(Path(__file__).parents[2] / "playbooks" / "host-prepare.yml"),
        ]
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(Path(__file__).parents[2] / "playbooks" / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
        }
        first = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=env, check=False
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert "accelerator tcg" in first.stdout or "accelerator kvm" in first.stdout
        assert "IOMMU:" in first.stdout
        links = subprocess.run(
            ["ip", "-n", host.netns, "-j", "addr", "show", "dev", "vmlbr0"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        (bridge,) = json.loads(links.stdout)
        assert "UP" in bridge["flags"]
        assert [a["local"] for a in bridge["addr_info"] if a["family"] == "inet"] == ["10.233.0.1"]
        port = subprocess.run(
            ["ip", "-n", host.netns, "-j", "link", "show", "dev", "vport0"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        assert json.loads(port.stdout)[0]["master"] == "vmlbr0"
        assert (tmp_path / "etc-ceph" / "ceph.conf").read_text() == ceph_conf.read_text()
        keyring_mode = (tmp_path / "etc-ceph" / "ceph.client.admin.keyring").stat().st_mode
        assert keyring_mode & 0o777 == 0o600

        again = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=env, check=False
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "changed=0" in again.stdout, again.stdout
