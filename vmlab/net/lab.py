"""An isolated lab network for one bench: a namespace with a bridge, and a NIC per guest.

::

    host namespace                          lab namespace vmlab-xxxxxxxx (10.X.Y.0/24)
    ──────────────                          ───────────────────────────────────────────
    QEMU ── fd ─────────────────────────▶  vt0 (tap) ──┐
    QEMU ── fd (macvtap char dev) ──────▶  mv0 ─ on mvp ═ veth ═ mvb ──┤
                                                        br0 10.X.Y.1  (peers, iperf3 -s, Ceph)
    vl-xxxxxxxx (optional uplink) ═══ veth ═══ up0 ─────┘

    libvirt ── tap vnetN ─ lb-xxxxxxxx (bridge) ─ lh-xxxxxxxx ═ veth ═ lbp ── br0
    libvirt ── macvtapN on lm-xxxxxxxx ═══════════════════════ veth ═ lmp ── br0
    libvirt ── vnetN ─ vnN-xxxxxxxx (a libvirt network, 10.A.B.1, nat | route)
                           └─ the host's routing ─ vl-xxxxxxxx 10.X.Y.2 ═ veth ═ up0 ── br0

QEMU stays in the host namespace; the tap or macvtap it uses lives in the lab namespace and
reaches QEMU as an inherited fd (``pass_fds``). libvirtd cannot take such fds, so for its
guests the lab grows host-side ports (:meth:`LabNetwork.add_host_port`) that carry no address,
not even IPv6 link-local, and libvirt makes its own tap or macvtap on them. Addresses come
from 10.0.0.0/8 and exist only inside the lab namespace, unless an uplink is asked to carry
one (``uplink_address=True``). A libvirt network (:meth:`LabNetwork.add_network_port`, NIC
``attach: network``) is the exception by design: libvirt gives its bridge an address in the
host namespace and NATs or routes its guests out through the host, here over the uplink
(which then carries 10.X.Y.2) to the lab's peers. Do that on a host whose namespace may carry
such addresses: a lab host, or a nested L1 (``hypervisor: {kind: nested}``).
Everything is torn down on exit, in reverse order, on errors and Ctrl-C too.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from vmlab.errors import GuestError, HostError
from vmlab.net import links
from vmlab.net.netns import Netns, host_side_name, ip_argv, run
from vmlab.render.model import mac_address

log = logging.getLogger(__name__)

LAB_RANGE = IPv4Network("10.0.0.0/8")
USER_NET = IPv4Network("10.0.2.0/24")  # QEMU user-mode net: the guests' management NIC
VHOST_NET = Path("/dev/vhost-net")
BRIDGE = "br0"
FIRST_GUEST_HOST = 10  # .1 bridge, .2 uplink's far end, guests from .10
NicKind = Literal["tap", "macvtap", "network"]


# --- addressing ------------------------------------------------------------------------------


def check_subnet(subnet: IPv4Network | str) -> IPv4Network:
    """A lab subnet: inside 10.0.0.0/8, /16 to /28, not QEMU user-mode's 10.0.2.0/24."""
    net = IPv4Network(subnet)
    if not net.subnet_of(LAB_RANGE):
        raise ValueError(f"lab subnet {net} is outside {LAB_RANGE}")
    if not 16 <= net.prefixlen <= 28:
        raise ValueError(f"lab subnet {net}: prefix must be /16 to /28")
    if net.overlaps(USER_NET):
        raise ValueError(f"lab subnet {net} overlaps the guests' user-mode network {USER_NET}")
    return net


def choose_subnet(
    avoid: Sequence[IPv4Network] = (), *, rng: random.Random | None = None
) -> IPv4Network:
    """A random 10.X.Y.0/24 that overlaps nothing in ``avoid`` nor 10.0.2.0/24."""
    rng = rng or random.Random()  # noqa: S311 - picks a subnet, not a secret
    taken = [USER_NET, *avoid]
    for _ in range(1000):
        net = IPv4Network(f"10.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise HostError("no free 10.X.Y.0/24 for a lab network", hint="pass a subnet explicitly")


def host_networks(netns: str | None = None) -> list[IPv4Network]:
    """IPv4 destinations routed in a namespace (read-only: ``ip -j -4 route show table all``)."""
    proc = run(ip_argv(netns, "-j", "-4", "route", "show", "table", "all"))
    nets = []
    for route in json.loads(proc.out or "[]"):
        dst = str(route.get("dst", ""))
        if dst in ("", "default"):
            continue
        try:
            nets.append(IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return nets


@dataclass(frozen=True)
class LabAddresses:
    subnet: IPv4Network

    @property
    def gateway(self) -> IPv4Interface:
        """The bridge's address: where peers in the lab namespace listen."""
        return IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")

    @property
    def uplink(self) -> IPv4Interface:
        """The far end of the uplink veth (the host, or another namespace)."""
        return IPv4Interface(f"{self.subnet.network_address + 2}/{self.subnet.prefixlen}")

    def guest(self, index: int) -> IPv4Interface:
        address = self.subnet.network_address + FIRST_GUEST_HOST + index
        if address >= self.subnet.broadcast_address:
            raise HostError(f"lab subnet {self.subnet} has no room for guest #{index}")
        return IPv4Interface(f"{address}/{self.subnet.prefixlen}")


# --- vhost-net -------------------------------------------------------------------------------


def vhost_available(device: Path | None = None) -> bool:
    return (device or VHOST_NET).exists()


def check_vhost(device: Path | None = None) -> None:
    """Preflight for ``vhost=on``. QEMU opens /dev/vhost-net itself; QEMU 7.2 given a tap fd
    with vhost=on and no /dev/vhost-net warns and then aborts (assertion in net_client_init1),
    so this must be checked before QEMU starts."""
    device = device or VHOST_NET
    if not vhost_available(device):
        raise HostError(
            f"vhost=on needs {device}, which this host lacks",
            hint="modprobe vhost_net (on a KVM host), or set vhost: false",
        )


# --- one guest NIC ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabNic:
    """A guest NIC on the lab network, ready for QEMU: pass ``fds`` with ``pass_fds``; the
    templates render its -netdev and -device (vmlab.render.qemu.nic_plans). ``mac`` is what the
    guest NIC must use (a macvtap drops other MACs)."""

    guest: str
    kind: NicKind
    netdev_id: str
    ifname: str  # the tap / macvtap in the lab namespace
    netns: str
    mac: str
    fds: tuple[int, ...]
    address: IPv4Interface  # for the guest to configure on this NIC
    gateway: IPv4Interface
    vhost: bool
    # A NIC libvirt attaches itself has no fds: ``ifname`` is then a device in the host
    # namespace, the lab's host-side bridge (tap) or macvtap parent, with no address on it.
    host_queues: int = 1
    network: LibvirtNetwork | None = None  # kind network: the network libvirt makes for it
    routes: tuple[str, ...] = ()  # "NET via ADDR" the guest adds (the lab, beyond its network)

    @property
    def queues(self) -> int:
        return len(self.fds) if self.fds else self.host_queues

    def guest_commands(self, ifname: str) -> list[str]:
        """Shell commands (busybox ``ip``) that give the guest's NIC ``ifname`` its address.
        The name comes from the guest: GuestError unless it is an interface name."""
        dev = shlex.quote(check_guest_ifname(ifname))
        return [
            f"ip link set dev {dev} up",
            f"ip addr add {self.address.with_prefixlen} dev {dev}",
            *(f"ip route add {route} dev {dev}" for route in self.routes),
        ]


@dataclass(frozen=True)
class LibvirtNetwork:
    """A libvirt network of one lab NIC (vmlab.render.libvirt.render_network): transient,
    made before the guest's domain and destroyed after it. Its bridge carries ``address`` in
    the host namespace; ``forward`` nat masquerades the guest behind the host, route routes
    its subnet (the lab namespace has a route back through the uplink)."""

    name: str
    bridge: str
    address: IPv4Interface
    forward: Literal["nat", "route"]


def check_guest_ifname(name: str) -> str:
    """``name`` if it is what Linux takes for an interface name, else GuestError."""
    if not links.is_ifname(name):
        raise GuestError(
            f"the guest named a NIC {name!r}: not an interface name "
            "(1-15 characters, no '/', ':' or whitespace)",
            hint="more than one NIC with the lab MAC, or a guest that is not the one vmlab "
            "booted: read guest-facts.txt in the case directory",
        )
    return name


def guest_ifname_command(mac: str) -> str:
    """A guest shell command printing the name of the NIC with ``mac`` (sysfs, busybox sh)."""
    return (
        "for d in /sys/class/net/*; do "
        f'[ "$(cat "$d/address")" = {shlex.quote(mac.lower())} ] && echo "${{d##*/}}"; '
        "done; true"
    )


# --- the lab network -------------------------------------------------------------------------


class LabNetwork:
    """A namespace with a bridge at ``addresses.gateway``; guests join with :meth:`add_tap` or
    :meth:`add_macvtap`. With ``uplink`` a veth joins the bridge to ``uplink_netns`` (None:
    the host namespace); only with ``uplink_address`` does its far end get an address (the
    host's routing then gains the lab subnet, so the subnet is chosen to overlap no route)."""

    def __init__(
        self,
        *,
        subnet: IPv4Network | str | None = None,
        uplink: bool = False,
        uplink_netns: str | None = None,
        uplink_address: bool = False,
        netns_name: str | None = None,
    ) -> None:
        if uplink_address and not uplink:
            raise ValueError("uplink_address needs uplink=True")
        self.netns = Netns(netns_name)
        self._subnet = check_subnet(subnet) if subnet is not None else None
        self.uplink = uplink
        self.uplink_netns = uplink_netns
        self.uplink_address = uplink_address
        self.addresses = LabAddresses(self._subnet or choose_subnet())
        self.uplink_link: links.Link | None = None
        self.nics: list[LabNic] = []
        self._stack = ExitStack()
        self._macvtap_parent: str | None = None
        self._host_bridge_name: str | None = None
        self._host_parent_name: str | None = None

    @property
    def name(self) -> str:
        return self.netns.name

    @property
    def gateway(self) -> IPv4Address:
        return self.addresses.gateway.ip

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the lab namespace (a peer, ``iperf3 -s``, a Ceph daemon)."""
        return self.netns.exec_argv(argv)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close fds, delete links, delete the namespace (stopping what still runs in it)."""
        try:
            self._stack.close()
        finally:
            self.nics.clear()
            self.uplink_link = None
            self._macvtap_parent = None
            self._host_bridge_name = self._host_parent_name = None

    def _build(self) -> None:
        stack = self._stack
        if self._subnet is None and self.uplink_address:
            self.addresses = LabAddresses(choose_subnet(host_networks(self.uplink_netns)))
        elif self._subnet is not None and self.uplink_address:
            clash = [n for n in host_networks(self.uplink_netns) if n.overlaps(self._subnet)]
            if clash:
                raise HostError(
                    f"lab subnet {self._subnet} overlaps routes {clash} where the uplink ends",
                    hint="pick another 10.X.Y.0/24, or leave the subnet out",
                )
        ns = stack.enter_context(self.netns).name
        stack.enter_context(links.bridge(BRIDGE, netns=ns, address=str(self.addresses.gateway)))
        if self.uplink:
            outer = f"vl-{ns.removeprefix('vmlab-')}"[: links.IFNAMSIZ - 1]
            pair = stack.enter_context(
                links.veth_pair(
                    outer, "up0", netns=self.uplink_netns, peer_netns=ns, peer_master=BRIDGE
                )
            )
            self.uplink_link = pair.near
            if self.uplink_address:
                log.warning(
                    "giving %s the address %s in %s",
                    outer,
                    self.addresses.uplink,
                    self.uplink_netns or "the host namespace",
                )
                links.add_address(outer, str(self.addresses.uplink), self.uplink_netns)
        log.info("lab network %s: bridge %s at %s", ns, BRIDGE, self.addresses.gateway)

    # -- guests ------------------------------------------------------------------------------
    def _next(self, guest: str, kind: NicKind) -> tuple[int, str]:
        if any(n.guest == guest and n.kind == kind for n in self.nics):
            raise ValueError(f"guest {guest!r} already has a {kind} NIC on {self.name}")
        if not self.netns.created:
            raise RuntimeError("LabNetwork used outside its `with` block")
        index = len(self.nics)
        return index, mac_address(f"{self.name}/{guest}/{kind}")

    def add_tap(self, guest: str, *, queues: int = 1, vhost: bool = False) -> LabNic:
        """A tap on the lab bridge and its fd(s), opened inside the namespace."""
        if vhost:
            check_vhost()
        links.check_queues(queues)
        index, mac = self._next(guest, "tap")
        ns, name = self.name, f"vt{index}"
        multi = queues > 1
        self._stack.enter_context(links.tap(name, netns=ns, bridge=BRIDGE, multi_queue=multi))
        fds = self._stack.enter_context(
            links.open_tap(name, netns=ns, queues=queues, multi_queue=multi)
        )
        return self._add(
            LabNic(
                guest=guest,
                kind="tap",
                netdev_id=f"lab{index}",
                ifname=name,
                netns=ns,
                mac=mac,
                fds=tuple(fds),
                address=self.addresses.guest(index),
                gateway=self.addresses.gateway,
                vhost=vhost,
            )
        )

    def add_macvtap(self, guest: str, *, queues: int = 1, vhost: bool = False) -> LabNic:
        """A bridge-mode macvtap on a veth whose other end is on the lab bridge, and its fd(s).
        The namespace itself reaches the guest through the bridge, not through the parent."""
        if vhost:
            check_vhost()
        links.check_queues(queues)
        index, mac = self._next(guest, "macvtap")
        ns, name = self.name, f"mv{index}"
        parent = self._parent()
        tap_dev = self._stack.enter_context(links.macvtap(name, parent, netns=ns, mac=mac))
        if tap_dev.mac.lower() != mac.lower():
            raise HostError(f"macvtap {name} has MAC {tap_dev.mac}, not the {mac} asked for")
        fds = self._stack.enter_context(links.open_macvtap(tap_dev, queues=queues))
        return self._add(
            LabNic(
                guest=guest,
                kind="macvtap",
                netdev_id=f"lab{index}",
                ifname=name,
                netns=ns,
                mac=tap_dev.mac,
                fds=tuple(fds),
                address=self.addresses.guest(index),
                gateway=self.addresses.gateway,
                vhost=vhost,
            )
        )

    def add_host_port(
        self, guest: str, kind: NicKind, *, queues: int = 1, vhost: bool = False
    ) -> LabNic:
        """A lab NIC for a launcher that makes the tap or macvtap itself in the host namespace
        (libvirt's ``<interface type='bridge'>`` / ``type='direct'``): a host-side device joined
        to the lab bridge by a veth, with no address (not even IPv6 link-local). tap: the bridge
        ``lb-<id>``; macvtap: the veth end ``lm-<id>`` as the macvtap's parent."""
        if vhost:
            check_vhost()
        links.check_queues(queues)
        index, mac = self._next(guest, kind)
        return self._add(
            LabNic(
                guest=guest,
                kind=kind,
                netdev_id=f"lab{index}",
                ifname=self._host_bridge() if kind == "tap" else self._host_parent(),
                netns=self.name,
                mac=mac,
                fds=(),
                address=self.addresses.guest(index),
                gateway=self.addresses.gateway,
                vhost=vhost,
                host_queues=queues,
            )
        )

    def add_network_port(
        self,
        guest: str,
        *,
        forward: Literal["nat", "route"],
        owner: str,
        queues: int = 1,
        vhost: bool = False,
    ) -> LabNic:
        """A lab NIC on a libvirt network of its own (``<interface type='network'>``): a
        10.A.B.0/24 that overlaps no route, its .1 on libvirt's bridge, the guest at .10 with a
        route to the lab through it, and the lab's route back to it through the uplink.
        ``owner`` (``<pid>-<start ticks>``) goes into the network's name, for the sweep of a
        network whose vmlab died. The launcher makes the network (vmlab.launch.libvirt)."""
        if not (self.uplink and self.uplink_address and self.uplink_netns is None):
            raise RuntimeError("a libvirt network port needs LabNetwork(uplink_address=True)")
        if vhost:
            check_vhost()
        links.check_queues(queues)
        index, mac = self._next(guest, "network")
        taken = [self.addresses.subnet, *host_networks(None)]
        subnet = choose_subnet(taken + [n.network.address.network for n in self.nics if n.network])
        ns_id = self.name.removeprefix("vmlab-")
        network = LibvirtNetwork(
            name=f"vmlab-net-{owner}-{ns_id}-{index}",
            bridge=f"vn{index}-{ns_id}"[: links.IFNAMSIZ - 1],
            address=IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}"),
            forward=forward,
        )
        # The lab's peers answer the guest's subnet through the uplink (route mode: the
        # guest's own address; nat: the uplink's, which is on the lab subnet anyway).
        run(ip_argv(self.name, "route", "add", str(subnet), "via", str(self.addresses.uplink.ip)))
        return self._add(
            LabNic(
                guest=guest,
                kind="network",
                netdev_id=f"lab{index}",
                ifname=network.bridge,
                netns=self.name,
                mac=mac,
                fds=(),
                address=IPv4Interface(
                    f"{subnet.network_address + FIRST_GUEST_HOST}/{subnet.prefixlen}"
                ),
                gateway=self.addresses.gateway,
                vhost=vhost,
                host_queues=queues,
                network=network,
                routes=(f"{self.addresses.subnet} via {network.address.ip}",),
            )
        )

    def _host_bridge(self) -> str:
        if self._host_bridge_name is None:
            name = host_side_name("lb", self.name)
            self._stack.enter_context(links.bridge(name, link_local=False))
            self._stack.enter_context(
                links.veth_pair(
                    host_side_name("lh", self.name),
                    "lbp",
                    peer_netns=self.name,
                    master=name,
                    peer_master=BRIDGE,
                    link_local=False,
                )
            )
            self._host_bridge_name = name
        return self._host_bridge_name

    def _host_parent(self) -> str:
        if self._host_parent_name is None:
            name = host_side_name("lm", self.name)
            self._stack.enter_context(
                links.veth_pair(
                    name, "lmp", peer_netns=self.name, peer_master=BRIDGE, link_local=False
                )
            )
            self._host_parent_name = name
        return self._host_parent_name

    def _parent(self) -> str:
        if self._macvtap_parent is None:
            self._stack.enter_context(
                links.veth_pair("mvp", "mvb", netns=self.name, peer_master=BRIDGE)
            )
            self._macvtap_parent = "mvp"
        return self._macvtap_parent

    def _add(self, nic: LabNic) -> LabNic:
        self.nics.append(nic)
        log.info("%s: %s NIC %s (%s) for %s", self.name, nic.kind, nic.ifname, nic.mac, nic.guest)
        return nic

    def pass_fds(self) -> tuple[int, ...]:
        """Every NIC fd, for ``subprocess.Popen(..., pass_fds=...)``."""
        return tuple(fd for nic in self.nics for fd in nic.fds)
