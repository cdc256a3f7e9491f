"""Lab networks for real, as root: namespaces, bridge, veth, tap, macvtap, iperf3, and one TCG
guest with a management NIC plus a tap NIC and a macvtap NIC on the lab network.

Nothing may be left behind: no namespace, no link, no /dev node, no private node directory,
no state record, no process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmlab.guest.boot import plan_boot
from vmlab.guest.image import GuestImage
from vmlab.guest.ssh import GuestSSH, lab_key, public_line, wait_banner
from vmlab.launch.base import LaunchRequest
from vmlab.launch.direct import QemuLauncher
from vmlab.launch.qemu import Deadlines
from vmlab.net import links, netns
from vmlab.net.iperf import IperfServer, client_argv, guest_client_command, parse_iperf
from vmlab.net.lab import LabNetwork, LabNic, guest_ifname_command
from vmlab.net.netns import Netns
from vmlab.paths import runtime_dir
from vmlab.plan import plan
from vmlab.render.model import DiskSource
from vmlab.results.rundir import CaseDir
from vmlab.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]

QEMU = "qemu-system-x86_64"
GONE_TIMEOUT_S = 5.0
RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+")  # iputils: rtt min/avg/max/mdev = a/b/c/d ms


@pytest.fixture(autouse=True)
def _requirements(lab_env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_MKNOD): run pytest as root")
    for binary, package in (("ip", "iproute2"), ("iperf3", "iperf3"), ("ping", "iputils-ping")):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is missing: apt-get install {package}")


def wait_until(check: Callable[[], bool], timeout_s: float = GONE_TIMEOUT_S) -> bool:
    """Namespaces and devices go away in the kernel's own time: poll for it, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_nothing_left(names: Sequence[str], dev_nodes: Sequence[Path] = ()) -> None:
    assert wait_until(lambda: not any(netns.exists(n) for n in names)), names
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not any(n in listed.stdout for n in names)
    assert wait_until(lambda: not any(p.exists() for p in dev_nodes)), dev_nodes
    host_links = links.list_links()
    assert not [n for n in host_links if n.startswith("vl-")], host_links
    assert not list(netns.state_root().glob("*.json"))
    assert not list(runtime_dir().glob("mvtap-*")) if runtime_dir().exists() else True


def ping_rtt_ms(output: str) -> float:
    match = RTT_RE.search(output)
    assert match, output
    return float(match.group(1))


# --- namespaces only -------------------------------------------------------------------------


def test_two_namespaces_ping_and_iperf(tmp_path: Path) -> None:
    with (
        Netns() as peer,
        LabNetwork(uplink=True, uplink_netns=peer.name, uplink_address=True) as net,
    ):
        names = [peer.name, net.name]
        gateway, peer_ip = str(net.gateway), str(net.addresses.uplink.ip)
        assert net.uplink_link is not None and net.uplink_link.netns == peer.name
        assert peer.run(["ping", "-c", "2", "-W", "5", gateway], timeout_s=30).returncode == 0
        back = net.netns.run(["ping", "-c", "2", "-W", "5", peer_ip], timeout_s=30)
        assert " 0% packet loss" in back.out

        with IperfServer(net.netns, gateway, output=tmp_path / "server.json") as server:
            out = peer.run(client_argv(gateway, duration_s=1), timeout_s=60)
            (tmp_path / "client.json").write_text(out.out)  # saved before it is parsed
            result = parse_iperf(out.out, path=tmp_path / "client.json")
            assert server.wait(timeout_s=10) == 0
        assert result.protocol == "TCP" and not result.reverse
        assert result.local_host == peer_ip and result.remote_host == gateway
        assert result.received_bytes > 0 and result.received_bits_per_s > 0
        assert json.loads((tmp_path / "server.json").read_text())["end"]["sum_received"]["bytes"]
    assert_nothing_left(names)


def test_interrupt_tears_everything_down() -> None:
    nodes: list[Path] = []
    with pytest.raises(KeyboardInterrupt), LabNetwork() as net:
        names = [net.name]
        tap_nic = net.add_tap("g1", queues=2)
        mv_nic = net.add_macvtap("g1")
        assert {"br0", "vt0", "mv1", "mvp", "mvb"} <= set(links.list_links(net.name))
        assert links.tap_fd_name(tap_nic.fds[0]) == "vt0"
        tun = links.link_json("vt0", net.name)["linkinfo"]["info_data"]
        assert tun["multi_queue"] and tun["numqueues"] == 2 and tun["vnet_hdr"]
        assert tun["user"] == "root"  # owned by the uid that made it (root here)
        nodes.append(Path(f"/dev/tap{links.read_link('mv1', net.name).ifindex}"))
        assert len(tap_nic.fds) == 2 and len(mv_nic.fds) == 1
        raise KeyboardInterrupt
    for fd in (*tap_nic.fds, *mv_nic.fds):
        with pytest.raises(OSError):
            os.fstat(fd)
    assert_nothing_left(names, nodes)


def test_macvtap_private_node(tmp_path: Path) -> None:
    """With no usable /dev/tapN the fd comes from a private mknod node, removed at once."""
    empty_dev, node_dir = tmp_path / "dev", tmp_path / "nodes"
    empty_dev.mkdir()
    with (
        Netns() as ns,
        links.veth_pair("mvp", "mvb", netns=ns.name) as pair,
        links.macvtap("mv0", pair.near.name, netns=ns.name, mac="52:54:00:0a:0b:0c") as dev,
    ):
        assert dev.mac == "52:54:00:0a:0b:0c"
        with links.open_macvtap(dev, queues=2, node_dir=node_dir, dev_dir=empty_dev) as fds:
            assert [os.major(os.fstat(fd).st_rdev) for fd in fds] == [dev.major] * 2
            assert os.minor(os.fstat(fds[0]).st_rdev) == dev.minor
            assert links.tap_fd_name(fds[0]) == "mv0"
            assert list(node_dir.iterdir()) == []  # node and its folder gone, fds still open
        names = [ns.name]
        node = dev.devnode
    assert_nothing_left(names, [node])


def test_sweep_removes_a_dead_owners_namespace_and_processes() -> None:
    ns = Netns()
    ns.create()
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        sleeper = subprocess.Popen(ns.exec_argv(["sleep", "60"]))
        assert wait_until(lambda: sleeper is not None and sleeper.pid in ns.pids())
        dead = subprocess.Popen(["true"])
        dead_start = netns._proc_start(dead.pid)
        dead.wait(timeout=10)
        ns.state_file.write_text(
            json.dumps({"name": ns.name, "owner_pid": dead.pid, "owner_start": dead_start})
        )
        bridge = netns.host_side_name("lb", ns.name)  # a libvirt lab's host-side bridge
        with links.bridge(bridge, link_local=False):
            assert netns.sweep_stale() == [ns.name]
            assert not Path(f"/sys/class/net/{bridge}").exists()
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert not ns.state_file.exists()
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=10)
        ns.close()
    assert_nothing_left([ns.name])


# --- a guest with a tap NIC and a macvtap NIC -------------------------------------------------


@dataclass
class Booted:
    net: LabNetwork
    tap: LabNic
    macvtap: LabNic
    ssh: GuestSSH
    case_dir: CaseDir
    dev_nodes: list[Path]


LINKS_SPEC = {
    "name": "links",
    "guest": {
        "memory_mib": 512,
        "cpus": 1,
        "disks": [{"name": "data", "backend": {"type": "file", "size": "16M"}}],
        "nics": [{"name": "lab0", "attach": "tap"}, {"name": "lab1", "attach": "macvtap"}],
    },
    "jobs": [{"name": "j", "rw": "randread"}],
}


@contextmanager
def guest_on_lab(guest_image: GuestImage, tmp_path: Path) -> Iterator[Booted]:
    """A lab network with a tap NIC and a macvtap NIC for one TCG guest that also has a
    user-mode management NIC (SSH through hostfwd), launched by the QEMU launcher from the
    rendered argv; QEMU is stopped before the lab goes."""
    (case,) = plan(parse_spec(LINKS_SPEC))
    key = lab_key(tmp_path / "id_ed25519")
    case_dir = CaseDir(path=tmp_path / "case", case_id=case.id)
    nonce = "links"
    boot = plan_boot(
        case.id,
        case.variant.guest,
        case_dir=case_dir,
        scratch=tmp_path / "boot",
        nonce=nonce,
        public_key=public_line(key),
        default=guest_image,
    )
    data = tmp_path / "data.raw"
    with data.open("wb") as fh:
        fh.truncate(16 << 20)
    with LabNetwork() as net:
        tap_nic = net.add_tap(case.id)
        mv_nic = net.add_macvtap(case.id)
        node = Path(f"/dev/tap{links.read_link(mv_nic.ifname, net.name).ifindex}")
        request = LaunchRequest(
            case=case,
            case_dir=case_dir,
            accel="tcg",
            boot=boot.boot,
            disks={"data": DiskSource(path=data)},
            deadlines=Deadlines.for_accel("tcg"),
            ready_marker=boot.ready_marker,
            failed_marker=boot.failed_marker,
            nics=[tap_nic, mv_nic],
        )
        with QemuLauncher(QEMU).launch(request) as vm:
            wait_banner(vm.ssh_host, vm.ssh_port, timeout_s=60)
            with GuestSSH.connect(
                vm.ssh_host,
                vm.ssh_port,
                user=boot.user,
                key=key,
                host_key=boot.host_key,
                timeout_s=60,
            ) as ssh:
                yield Booted(net, tap_nic, mv_nic, ssh, case_dir, [node])


def test_guest_on_tap_and_macvtap(
    guest_image: GuestImage,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    qemu_pids: Callable[[str], list[int]],
) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is missing: apt-get install qemu-system-x86")
    with guest_on_lab(guest_image, tmp_path) as booted:
        net, ssh = booted.net, booted.ssh
        links_out = ssh.run("ip -o link", timeout_s=30).text
        assert booted.tap.mac in links_out and booted.macvtap.mac in links_out
        gateway = str(net.gateway)
        for nic in (booted.tap, booted.macvtap):
            ifname = ssh.run(guest_ifname_command(nic.mac), timeout_s=30).text.strip()
            assert re.fullmatch(r"eth[12]", ifname), ifname
            for command in nic.guest_commands(ifname):
                ssh.run(command, timeout_s=30)
            ssh.run(f"ping -c 2 -W 10 {gateway}", timeout_s=60)  # busybox ping, guest → lab
            ping = net.netns.run(
                ["ping", "-c", "5", "-i", "0.2", "-W", "5", str(nic.address.ip)], timeout_s=60
            )
            record_property(f"{nic.kind}_rtt_avg_ms", ping_rtt_ms(ping.out))
            client = guest_client_command(gateway, duration_s=2)
            with IperfServer(net.netns, gateway, output=tmp_path / f"{nic.kind}-server.json"):
                out = ssh.run(client, timeout_s=90, check=False)
            (tmp_path / f"{nic.kind}-client.json").write_bytes(out.stdout)
            result = parse_iperf(out.stdout, path=tmp_path / f"{nic.kind}-client.json")
            assert result.local_host == str(nic.address.ip) and result.remote_host == gateway
            assert result.received_bytes > 0
            record_property(f"{nic.kind}_received_bits_per_s", result.received_bits_per_s)
            ssh.run(f"ip addr flush dev {ifname}; ip link set dev {ifname} down", timeout_s=30)
        names, nodes, case_dir = [net.name], booted.dev_nodes, booted.case_dir
    assert qemu_pids(str(case_dir.path)) == []
    assert_nothing_left(names, nodes)
