"""Lab network building blocks without root or a network: names, argv, addressing, QEMU
arguments, vhost preflight, state-file sweeps, and iperf3 JSON produced on a real machine."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vmlab.errors import CommandError, GuestError, HostError, ResultError
from vmlab.metrics import IPERF_METRICS
from vmlab.net import iperf, lab, links, netns
from vmlab.net.lab import LabAddresses, LabNetwork, LabNic

IPERF_DATA = Path(__file__).parent.parent / "data" / "iperf"


# --- netns -----------------------------------------------------------------------------------


def test_names_are_prefixed_and_unique() -> None:
    names = {netns.new_name() for _ in range(50)}
    assert len(names) == 50
    assert all(netns.NAME_RE.match(n) and n.startswith("vmlab-") for n in names)


@pytest.mark.parametrize("bad", ["lab0", "vmlab-", "vmlab-../x", "vmlab-a b", "VMLAB-x"])
def test_foreign_or_odd_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        netns.Netns(bad)


def test_commands_inside_a_namespace() -> None:
    ns = netns.Netns("vmlab-unit1")
    assert ns.exec_argv(["iperf3", "-s"]) == ["ip", "netns", "exec", "vmlab-unit1", "iperf3", "-s"]
    assert ns.ip("link", "show") == ["ip", "-n", "vmlab-unit1", "link", "show"]
    assert netns.ip_argv(None, "link") == ["ip", "link"]
    assert ns.path == Path("/run/netns/vmlab-unit1")


def test_owner_liveness_uses_pid_and_start_time() -> None:
    me = netns.Owner.me()
    assert me.alive()
    assert not netns.Owner(me.pid, str(int(me.start) + 1)).alive()  # a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = netns._proc_start(child.pid)
    child.wait(timeout=30)
    assert start is not None
    assert not netns.Owner(child.pid, start).alive()


def _record(root: Path, name: str, owner: netns.Owner) -> Path:
    folder = netns.state_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "owner_pid": owner.pid, "owner_start": owner.start}))
    return path


def test_sweep_keeps_live_owners_and_drops_dead_records(tmp_path: Path) -> None:
    alive = _record(tmp_path, "vmlab-unitlive", netns.Owner.me())
    dead = _record(tmp_path, "vmlab-unitdead", netns.Owner(2**22 + 7, "1"))
    junk = netns.state_root(tmp_path) / "vmlab-junk.json"
    junk.write_text("{not json")
    # The dead owner's namespace does not exist, so nothing is deleted, only its record.
    assert netns.sweep_stale(tmp_path) == []
    assert alive.exists() and junk.exists()
    assert not dead.exists()


def test_sweep_of_a_missing_state_dir_is_empty(tmp_path: Path) -> None:
    assert netns.sweep_stale(tmp_path / "nothing") == []


def test_call_in_a_missing_namespace_is_a_host_error() -> None:
    with pytest.raises(HostError, match="does not exist"):
        netns.call_in_netns("vmlab-doesnotexist0", lambda: 1)


def test_failed_command_keeps_argv_and_output() -> None:
    with pytest.raises(CommandError) as info:
        netns.run([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert info.value.returncode == 3
    assert "boom" in info.value.output
    assert info.value.argv[0] == sys.executable


# --- links -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a" * 16, "a/b", " br0", "br 0", "br0:1", ".."])
def test_interface_names_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        links.check_ifname(bad)
    assert links.check_ifname("a" * 15) == "a" * 15


def test_tap_flags() -> None:
    assert links.tap_flags(multi_queue=False) == 0x5002  # TAP | NO_PI | VNET_HDR
    assert links.tap_flags(multi_queue=True) == 0x5102
    assert links.tap_flags(multi_queue=False, vnet_hdr=False) == 0x1002


def test_queue_limits() -> None:
    for bad in (0, links.MAX_QUEUES + 1):
        with pytest.raises(ValueError, match="queues"):
            links.check_queues(bad)
    with pytest.raises(ValueError, match="multi_queue"), links.open_tap("vt0", queues=2):
        pass


def test_macvtap_devnode_is_by_ifindex() -> None:
    tap = links.Macvtap("mv0", "vmlab-x", 17, "52:54:00:aa:bb:cc", "mvp", "bridge", 246, 3)
    assert tap.devnode == Path("/dev/tap17")


# --- lab addressing ----------------------------------------------------------------------------


def test_subnets_stay_in_ten_slash_eight_away_from_user_net() -> None:
    assert lab.check_subnet("10.77.3.0/24") == IPv4Network("10.77.3.0/24")
    for bad, why in (
        ("192.168.1.0/24", "outside"),
        ("10.0.0.0/16", "user-mode"),
        ("10.0.2.0/24", "user-mode"),
        ("10.0.0.0/8", "prefix"),
        ("10.9.9.0/30", "prefix"),
        ("10.9.9.1/24", "host bits"),
    ):
        with pytest.raises(ValueError, match=why):
            lab.check_subnet(bad)


def test_chosen_subnets_avoid_routes() -> None:
    rng = random.Random(1)
    avoid = [IPv4Network(f"10.{i}.0.0/16") for i in range(1, 250)]
    for _ in range(20):
        net = lab.choose_subnet(avoid, rng=rng)
        assert net.prefixlen == 24 and net.subnet_of(lab.LAB_RANGE)
        assert not any(net.overlaps(a) for a in [*avoid, lab.USER_NET])
    with pytest.raises(HostError, match="no free"):
        lab.choose_subnet([IPv4Network("10.0.0.0/8")], rng=rng)


def test_addresses() -> None:
    addrs = LabAddresses(IPv4Network("10.50.60.0/24"))
    assert str(addrs.gateway) == "10.50.60.1/24"
    assert str(addrs.uplink) == "10.50.60.2/24"
    assert str(addrs.guest(0)) == "10.50.60.10/24"
    assert str(addrs.guest(244)) == "10.50.60.254/24"
    with pytest.raises(HostError, match="no room"):
        addrs.guest(245)


def _nic(**kw: object) -> LabNic:
    fields: dict[str, object] = {
        "guest": "g1",
        "kind": "tap",
        "netdev_id": "lab0",
        "ifname": "vt0",
        "netns": "vmlab-unit",
        "mac": "52:54:00:12:34:56",
        "fds": (5,),
        "address": IPv4Interface("10.50.60.10/24"),
        "gateway": IPv4Interface("10.50.60.1/24"),
        "vhost": False,
    }
    fields.update(kw)
    return LabNic(**fields)  # type: ignore[arg-type]


def test_guest_commands() -> None:
    assert _nic().guest_commands("eth1") == [
        "ip link set dev eth1 up",
        "ip addr add 10.50.60.10/24 dev eth1",
    ]
    cmd = lab.guest_ifname_command("52:54:00:AB:CD:EF")
    assert "52:54:00:ab:cd:ef" in cmd and "/sys/class/net/" in cmd


@pytest.mark.parametrize(
    "bad",
    ["", "eth0; reboot", "eth 1", "eth1\neth2", "a" * 16, "../eth0", "eth0:1", ".", "..", "e\0"],
)
def test_guest_commands_refuse_a_name_that_is_no_interface_name(bad: str) -> None:
    # The name comes from the guest: it must never reach a shell as anything but one word.
    with pytest.raises(GuestError, match="interface name") as info:
        _nic().guest_commands(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("name", ["eth1", "enp0s3", "a" * 15, "br-lab.10", "$(reboot)", "x'y"])
def test_guest_commands_quote_the_name(name: str, tmp_path: Path) -> None:
    # Run the commands with a fake `ip` that prints its argv: the name arrives as one argument.
    fake = tmp_path / "ip"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s|" "$a"; done; echo\n')
    fake.chmod(0o755)
    for command, expected in zip(
        _nic().guest_commands(name),
        (["link", "set", "dev", name, "up"], ["addr", "add", "10.50.60.10/24", "dev", name]),
        strict=True,
    ):
        out = subprocess.run(
            ["sh", "-c", command],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert out.stdout.rstrip("\n").split("|")[:-1] == expected


def test_guest_ifname_command_runs_in_a_shell(tmp_path: Path) -> None:
    # The same script the guest runs, against a fake sysfs: only the matching NIC is printed.
    for name, mac in (("eth0", "52:54:00:00:00:01"), ("eth1", "52:54:00:ab:cd:ef")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    script = lab.guest_ifname_command("52:54:00:ab:cd:ef").replace("/sys/class/net", str(tmp_path))
    out = subprocess.run(
        ["sh", "-c", script], check=False, capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0
    assert out.stdout.split() == ["eth1"]


def test_guest_ifname_command_takes_the_mac_as_data(tmp_path: Path) -> None:
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "address").write_text("52:54:00:00:00:01\n")
    script = lab.guest_ifname_command('52:54:00:00:00:01" ] ; echo injected ; [ "').replace(
        "/sys/class/net", str(tmp_path)
    )
    out = subprocess.run(
        ["sh", "-c", script], check=False, capture_output=True, text=True, timeout=10
    )
    assert "injected" not in out.stdout
    assert out.stdout.split() == []


def test_vhost_preflight(tmp_path: Path) -> None:
    missing = tmp_path / "vhost-net"
    assert not lab.vhost_available(missing)
    with pytest.raises(HostError) as info:
        lab.check_vhost(missing)
    assert info.value.hint is not None and "vhost_net" in info.value.hint
    missing.touch()
    lab.check_vhost(missing)


def test_vhost_nic_is_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "VHOST_NET", tmp_path / "absent")
    network = LabNetwork(subnet="10.50.61.0/24")
    with pytest.raises(HostError, match="vhost"):
        network.add_tap("g1", vhost=True)
    with pytest.raises(HostError, match="vhost"):
        network.add_macvtap("g1", vhost=True)
    assert network.nics == []


def test_a_nic_on_a_libvirt_network_routes_to_the_lab_through_its_bridge() -> None:
    nic = _nic(kind="network", fds=(), routes=("10.50.60.0/24 via 10.77.5.1",))
    assert nic.guest_commands("eth1")[-1] == "ip route add 10.50.60.0/24 via 10.77.5.1 dev eth1"


def test_a_libvirt_network_port_needs_an_uplink_with_an_address_in_the_host() -> None:
    for kwargs in (
        {},
        {"uplink": True},
        {"uplink": True, "uplink_address": True, "uplink_netns": "x"},
    ):
        with pytest.raises(RuntimeError, match="uplink_address=True"):
            LabNetwork(**kwargs).add_network_port("g1", forward="nat", owner="1-2")  # type: ignore[arg-type]


class _FakeNetwork:
    def __init__(self, name: str) -> None:
        self._name, self.destroyed = name, False

    def name(self) -> str:
        return self._name

    def isActive(self) -> bool:
        return True

    def isPersistent(self) -> bool:
        return False

    def destroy(self) -> None:
        self.destroyed = True


def test_a_stale_lab_network_is_swept_and_a_live_or_foreign_one_is_kept() -> None:
    """libvirt 9.0 keeps no metadata on networks: the owner is in the name. (A real network
    here would put its address in the host namespace: the nested tier makes real ones.)"""
    from vmlab.launch.libvirt_owner import network_owner_tag, sweep_stale_networks

    nets = [
        _FakeNetwork(f"vmlab-net-{network_owner_tag()}-abc-0"),  # this process: live
        _FakeNetwork("vmlab-net-999999999-1-abc-0"),  # no such pid
        _FakeNetwork("default"),  # not vmlab's
    ]

    class Conn:
        def listAllNetworks(self, flags: int) -> list[_FakeNetwork]:
            return nets

    assert sweep_stale_networks(Conn()) == ["vmlab-net-999999999-1-abc-0"]
    assert [n.destroyed for n in nets] == [False, True, False]


def test_lab_network_argument_checks() -> None:
    with pytest.raises(ValueError, match="uplink"):
        LabNetwork(uplink_address=True)
    with pytest.raises(RuntimeError, match="outside"):
        LabNetwork().add_tap("g1")
    net = LabNetwork(subnet="10.50.62.0/24")
    assert str(net.gateway) == "10.50.62.1"
    assert net.exec_argv(["true"])[:3] == ["ip", "netns", "exec"]


# --- iperf3 ------------------------------------------------------------------------------------


def test_server_and_client_argv() -> None:
    assert iperf.server_argv("10.1.2.1", port=5300) == [
        "iperf3", "--server", "--one-off", "--json", "--bind", "10.1.2.1",
        "--port", "5300", "--idle-timeout", "120",
    ]  # fmt: skip
    argv = iperf.client_argv("10.1.2.1", duration_s=3, reverse=True, parallel=2)
    assert argv[:3] == ["iperf3", "--client", "10.1.2.1"]
    assert "--reverse" in argv and "--udp" not in argv
    assert argv[argv.index("--time") + 1] == "3"
    assert argv[argv.index("--parallel") + 1] == "2"
    udp = iperf.client_argv("10.1.2.1", udp=True, bitrate="100M", iperf3="/tmp/x y/iperf3")
    assert udp[-3:] == ["--udp", "--bitrate", "100M"]
    assert shlex.split(iperf.guest_client_command("10.1.2.1", iperf3="/tmp/x y/iperf3"))[0] == (
        "/tmp/x y/iperf3"
    )
    with pytest.raises(ValueError):
        iperf.client_argv("10.1.2.1", duration_s=0)
    assert iperf.client_timeout_s(10, slack_s=5) == 15


def _load(name: str) -> iperf.IperfResult:
    return iperf.parse_iperf((IPERF_DATA / name).read_text(), path=IPERF_DATA / name)


def test_parse_tcp_forward() -> None:
    r = _load("tcp-forward.json")
    assert (r.protocol, r.reverse, r.direction, r.num_streams) == (
        "TCP",
        False,
        "client-to-server",
        1,
    )
    assert r.version == "iperf 3.12"
    assert r.duration_s == 2.0
    assert r.sent_bytes == 4053794816 and r.received_bytes == 4050386944
    assert r.sent_bits_per_s == pytest.approx(16214141558.940228)
    assert r.received_bits_per_s == pytest.approx(16158557932.620264)
    assert r.retransmits == 498
    assert r.lost_packets is None and r.jitter_ms is None
    assert r.local_host == "10.231.7.10" and r.remote_host == "10.231.7.1"
    assert r.local_cpu_pct == pytest.approx(44.0870431369258)


def test_parse_tcp_reverse() -> None:
    r = _load("tcp-reverse.json")
    assert r.reverse and r.direction == "server-to-client"
    assert r.retransmits == 135  # the server's, as the sender
    assert r.received_bits_per_s == pytest.approx(16618575186.12233)


def test_parse_parallel_sums_streams() -> None:
    r = _load("tcp-parallel2.json")
    assert r.num_streams == 2
    streams = json.loads((IPERF_DATA / "tcp-parallel2.json").read_text())["end"]["streams"]
    assert r.received_bytes == sum(s["receiver"]["bytes"] for s in streams)


def test_parse_udp() -> None:
    r = _load("udp-forward.json")
    assert r.protocol == "UDP" and r.retransmits is None
    assert r.lost_packets == 0 and r.lost_pct == 0.0
    assert r.jitter_ms == pytest.approx(0.007447295817006886)
    metrics = iperf.summarize_iperf(r)
    assert "retransmits" not in metrics
    assert metrics["jitter_ms"] == pytest.approx(0.007447295817006886)
    assert set(metrics) <= set(IPERF_METRICS)
    assert IPERF_METRICS["received_bits_per_s"].higher_is_better
    assert not IPERF_METRICS["retransmits"].higher_is_better


def test_parse_failed_run() -> None:
    with pytest.raises(ResultError, match="Connection refused") as info:
        _load("refused.json")
    assert info.value.path == IPERF_DATA / "refused.json"


def test_parse_refuses_server_output() -> None:
    with pytest.raises(ResultError, match="server output"):
        _load("server-tcp-forward.json")


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"start": {}, "end": {}}', '{"start": {"test_start": {}}, "end": {}}'],
)
def test_parse_garbage(text: str) -> None:
    with pytest.raises(ResultError):
        iperf.parse_iperf(text)


def test_parse_truncated_end() -> None:
    data = json.loads((IPERF_DATA / "tcp-forward.json").read_text())
    del data["end"]["sum_sent"]["bits_per_second"]
    with pytest.raises(ResultError, match="layout"):
        iperf.parse_iperf(json.dumps(data))
