"""Bridges, veth pairs, taps and macvtaps as context managers, and their fds for QEMU.

Every link is created with ``ip`` (``ip -n NS`` inside a namespace) and deleted in ``finally``,
on errors and Ctrl-C too; a link that is already gone then is fine. QEMU gets a tap or macvtap
as an inherited file descriptor (``-netdev tap,id=X,fd=N`` with ``pass_fds``), so QEMU can run
in the host namespace while the device lives in a lab namespace:

* tap: ``/dev/net/tun`` opened inside the namespace (:func:`vmlab.net.netns.call_in_netns`)
  and attached with ``TUNSETIFF`` to the persistent tap ``ip tuntap add`` made;
* macvtap: its character device ``/dev/tapN`` (N = ifindex). ``/dev/tapN`` is trusted only if
  its device number matches the one sysfs shows inside the namespace (ifindexes are per
  namespace, so the name can belong to another namespace's macvtap, or be missing); otherwise
  a private node is made with mknod in a private directory, opened and removed at once. Nothing
  is ever created in /dev.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vmlab.errors import CommandError, HostError
from vmlab.net.netns import call_in_netns, ip_argv, run
from vmlab.paths import runtime_dir

log = logging.getLogger(__name__)

IFNAMSIZ = 16
TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
MAX_QUEUES = 16
_GONE = re.compile(r"Cannot find device|does not exist|No such device", re.IGNORECASE)
MacvtapMode = Literal["bridge", "vepa", "private", "passthru"]


@dataclass(frozen=True)
class Link:
    """A network device as ``ip -j link show`` reported it after it was set up."""

    name: str
    netns: str | None  # None: the host's namespace
    ifindex: int
    mac: str


@dataclass(frozen=True)
class VethPair:
    near: Link
    far: Link


@dataclass(frozen=True)
class Macvtap(Link):
    parent: str
    mode: MacvtapMode
    major: int
    minor: int

    @property
    def devnode(self) -> Path:
        """Where devtmpfs/udev would put its character device (may be absent or another's)."""
        return Path(f"/dev/tap{self.ifindex}")


def is_ifname(name: str) -> bool:
    """Whether the kernel takes ``name`` for an interface (its dev_valid_name): 1-15 bytes,
    not '.' or '..', no '/', ':', NUL or whitespace."""
    return (
        0 < len(name.encode(errors="surrogateescape")) < IFNAMSIZ
        and name not in (".", "..")
        and not any(c in "/:\0" or c.isspace() for c in name)
    )


def check_ifname(name: str) -> str:
    if not is_ifname(name):
        raise ValueError(
            f"invalid interface name {name!r} (1-15 characters, no '/', ':' or whitespace)"
        )
    return name


def link_json(name: str, netns: str | None = None) -> dict[str, Any]:
    """``ip -d -j link show dev NAME`` as a dict."""
    proc = run(ip_argv(netns, "-d", "-j", "link", "show", "dev", name))
    data = json.loads(proc.out)
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise CommandError(
            f"unexpected `ip -j link show` output for {name}",
            argv=ip_argv(netns, "-d", "-j", "link", "show", "dev", name),
            returncode=0,
            output=proc.out,
        )
    return data[0]


def link_exists(name: str, netns: str | None = None) -> bool:
    proc = run(ip_argv(netns, "-j", "link", "show", "dev", name), check=False)
    return proc.returncode == 0


def list_links(netns: str | None = None) -> list[str]:
    proc = run(ip_argv(netns, "-j", "link", "show"))
    return [str(d["ifname"]) for d in json.loads(proc.out or "[]")]


def read_link(name: str, netns: str | None = None) -> Link:
    data = link_json(name, netns)
    return Link(name=name, netns=netns, ifindex=int(data["ifindex"]), mac=str(data["address"]))


def delete_link(name: str, netns: str | None = None) -> None:
    """``ip link del``; a link (or namespace) that is already gone is not an error."""
    proc = run(ip_argv(netns, "link", "del", "dev", name), check=False)
    if proc.returncode != 0 and not _GONE.search(proc.err):
        raise CommandError(
            f"cannot delete link {name}",
            argv=ip_argv(netns, "link", "del", "dev", name),
            returncode=proc.returncode,
            output=proc.err,
        )
    log.debug("link %s deleted (netns %s)", name, netns or "host")


@contextmanager
def _deleted_at_exit(name: str, netns: str | None) -> Iterator[None]:
    try:
        yield
    finally:
        delete_link(name, netns)


def set_up(name: str, netns: str | None = None, *, master: str | None = None) -> None:
    if master is not None:
        run(ip_argv(netns, "link", "set", "dev", name, "master", master))
    run(ip_argv(netns, "link", "set", "dev", name, "up"))


def no_link_local(name: str, netns: str | None = None) -> None:
    """No IPv6 address generation on a link that is not up yet (so it never has an address)."""
    run(ip_argv(netns, "link", "set", "dev", name, "addrgenmode", "none"))


def add_address(name: str, cidr: str, netns: str | None = None) -> None:
    run(ip_argv(netns, "addr", "add", cidr, "dev", name))


# --- bridge, veth --------------------------------------------------------------------------


@contextmanager
def bridge(
    name: str, *, netns: str | None = None, address: str | None = None, link_local: bool = True
) -> Iterator[Link]:
    """A Linux bridge (STP off, so ports forward at once), up, with an optional ADDR/PREFIX.
    ``link_local=False``: no IPv6 link-local address either (a bridge in the host namespace
    that must carry no address at all)."""
    check_ifname(name)
    with _deleted_at_exit(name, netns):
        run(ip_argv(netns, "link", "add", "name", name, "type", "bridge", "stp_state", "0"))
        if not link_local:
            no_link_local(name, netns)
        if address is not None:
            add_address(name, address, netns)
        set_up(name, netns)
        yield read_link(name, netns)


@contextmanager
def veth_pair(
    name: str,
    peer: str,
    *,
    netns: str | None = None,
    peer_netns: str | None = None,
    master: str | None = None,
    peer_master: str | None = None,
    link_local: bool = True,
) -> Iterator[VethPair]:
    """A veth pair: ``name`` in ``netns``, ``peer`` moved into ``peer_netns`` (default: the
    same namespace), both up, optionally enslaved to bridges on their side. Deleting one end
    deletes both; the namespace is given at creation, so no end ever shows up elsewhere.
    ``link_local=False``: ``name`` gets no IPv6 link-local address."""
    check_ifname(name)
    check_ifname(peer)
    peer_ns = peer_netns if peer_netns is not None else netns
    where = ["netns", peer_ns] if peer_ns is not None and peer_ns != netns else []
    with _deleted_at_exit(name, netns):
        run(
            ip_argv(
                netns, "link", "add", "name", name, "type", "veth", "peer", "name", peer, *where
            )
        )
        if not link_local:
            no_link_local(name, netns)
        set_up(name, netns, master=master)
        set_up(peer, peer_ns, master=peer_master)
        yield VethPair(read_link(name, netns), read_link(peer, peer_ns))


# --- tap -------------------------------------------------------------------------------------


@contextmanager
def tap(
    name: str,
    *,
    netns: str | None = None,
    bridge: str | None = None,
    multi_queue: bool = False,
    user: int | None = None,
) -> Iterator[Link]:
    """A persistent tap (``ip tuntap add mode tap``) owned by ``user`` (default: the current
    uid), on ``bridge`` if given, up. QEMU attaches with :func:`open_tap` fds or, in the host
    namespace, ``-netdev tap,ifname=NAME,script=no,downscript=no``."""
    check_ifname(name)
    uid = os.getuid() if user is None else user
    args = ["tuntap", "add", "mode", "tap", "name", name, "user", str(uid)]
    if multi_queue:
        args.append("multi_queue")
    with _deleted_at_exit(name, netns):
        run(ip_argv(netns, *args))
        set_up(name, netns, master=bridge)
        yield read_link(name, netns)


def tap_flags(*, multi_queue: bool, vnet_hdr: bool = True) -> int:
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    return flags


def _attach_tap(name: str, flags: int) -> int:
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def tap_fd_name(fd: int) -> str:
    """The interface a tun/tap fd is attached to (TUNGETIFF)."""
    raw = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return raw[:IFNAMSIZ].split(b"\0", 1)[0].decode()


def check_queues(queues: int) -> int:
    if not 1 <= queues <= MAX_QUEUES:
        raise ValueError(f"queues must be 1..{MAX_QUEUES}, not {queues}")
    return queues


@contextmanager
def open_tap(
    name: str,
    *,
    netns: str | None = None,
    queues: int = 1,
    multi_queue: bool = False,
    vnet_hdr: bool = True,
) -> Iterator[list[int]]:
    """``queues`` fds attached to tap ``name`` (one per queue; several need a multi_queue tap),
    opened inside ``netns``; closed at exit. Flags must match how the tap was made: a
    multi_queue tap only accepts IFF_MULTI_QUEUE attaches, and vice versa."""
    check_queues(queues)
    if queues > 1 and not multi_queue:
        raise ValueError(f"tap {name}: {queues} queues need a multi_queue tap")
    flags = tap_flags(multi_queue=multi_queue, vnet_hdr=vnet_hdr)
    if not Path(TUN_DEVICE).exists():
        raise HostError(f"{TUN_DEVICE} is missing", hint="modprobe tun")
    fds: list[int] = []

    def attach_all() -> list[int]:
        opened: list[int] = []
        try:
            for _ in range(queues):
                opened.append(_attach_tap(name, flags))
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        return opened

    try:
        try:
            fds = call_in_netns(netns, attach_all) if netns else attach_all()
        except OSError as exc:
            raise HostError(
                f"cannot attach to tap {name}: {exc.strerror}",
                hint="the tap must exist, and multi_queue must match how it was created",
            ) from exc
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


# --- macvtap ---------------------------------------------------------------------------------


def _macvtap_dev(name: str, ifindex: int, netns: str | None) -> tuple[int, int]:
    """major:minor of the macvtap's character device, read from sysfs as the namespace sees it
    (sysfs shows only the namespace it was mounted in; ``ip netns exec`` remounts it)."""
    rel = f"/sys/class/net/{name}/macvtap/tap{ifindex}/dev"
    if netns is None:
        text = Path(rel).read_text()
    else:
        text = run(["ip", "netns", "exec", netns, "cat", rel]).out
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if match is None:
        raise HostError(f"unexpected device number {text.strip()!r} in {rel}")
    return int(match.group(1)), int(match.group(2))


@contextmanager
def macvtap(
    name: str,
    parent: str,
    *,
    netns: str | None = None,
    mode: MacvtapMode = "bridge",
    mac: str | None = None,
) -> Iterator[Macvtap]:
    """A macvtap on ``parent`` (mode bridge: guests on the same parent reach each other; the
    parent's own namespace does not reach them through the parent), up. Its MAC is the one the
    guest NIC must use (``Macvtap.mac``)."""
    check_ifname(name)
    args = ["link", "add", "link", parent, "name", name]
    if mac is not None:
        args += ["address", mac]
    args += ["type", "macvtap", "mode", mode]
    with _deleted_at_exit(name, netns):
        run(ip_argv(netns, *args))
        set_up(name, netns)
        link = read_link(name, netns)
        major, minor = _macvtap_dev(name, link.ifindex, netns)
        yield Macvtap(
            name=name,
            netns=netns,
            ifindex=link.ifindex,
            mac=link.mac,
            parent=parent,
            mode=mode,
            major=major,
            minor=minor,
        )


def _matches(path: Path, rdev: int) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev


@contextmanager
def open_macvtap(
    tap_dev: Macvtap,
    *,
    queues: int = 1,
    node_dir: Path | None = None,
    dev_dir: Path = Path("/dev"),
) -> Iterator[list[int]]:
    """``queues`` fds on the macvtap's character device (each open is one queue); closed at
    exit. Uses ``<dev_dir>/tapN`` when it is this macvtap's node, else a private mknod node
    under ``node_dir`` (default: the runtime dir) that is removed right after opening."""
    check_queues(queues)
    rdev = os.makedev(tap_dev.major, tap_dev.minor)
    devnode = dev_dir / tap_dev.devnode.name
    fds: list[int] = []
    try:
        if _matches(devnode, rdev):
            fds = _open_queues(tap_dev, devnode, queues)
        else:
            with _private_node(tap_dev, rdev, node_dir) as node:
                fds = _open_queues(tap_dev, node, queues)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _open_queues(tap_dev: Macvtap, node: Path, queues: int) -> list[int]:
    fds: list[int] = []
    try:
        for _ in range(queues):
            fds.append(os.open(node, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise HostError(
            f"cannot open macvtap {tap_dev.name} ({node}): {exc.strerror}",
            hint="opening a macvtap needs root, or the node's group",
        ) from exc
    return fds


@contextmanager
def _private_node(tap_dev: Macvtap, rdev: int, node_dir: Path | None) -> Iterator[Path]:
    root = node_dir or runtime_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="mvtap-", dir=root))
    node = folder / f"tap{tap_dev.ifindex}"
    try:
        try:
            os.mknod(node, stat.S_IFCHR | 0o600, rdev)
        except PermissionError as exc:
            raise HostError(
                f"cannot create a device node for macvtap {tap_dev.name}: {exc.strerror}",
                hint="mknod needs root (CAP_MKNOD)",
            ) from exc
        log.debug("private node %s for %s", node, tap_dev.name)
        yield node
    finally:
        node.unlink(missing_ok=True)
        folder.rmdir()


# --- QEMU arguments --------------------------------------------------------------------------
