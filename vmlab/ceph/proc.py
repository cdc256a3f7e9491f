"""Running Ceph's command-line tools, through vmlab's one runner (:func:`vmlab.proc.run`).

What Ceph adds to it: ``ip netns exec NS`` in front when the cluster lives in a network
namespace (its daemons and every client must run there), Debian's package names when a tool
is missing, the connection options and timeouts every ``ceph``/``rbd`` call needs, and a hint
to look at the daemons when a client hangs (it waits, rather than fails, while a mon or OSD
it needs is down).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vmlab.ceph.info import ClusterInfo
from vmlab.errors import HostError
from vmlab.proc import run

CEPH_PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-common")
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(CEPH_PACKAGES)
CLI_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10  # a client gives up finding a monitor after this
_HANG_HINT = "is the cluster up? `vmlab ceph status` shows its daemons"


def netns_prefix(netns: str | None) -> list[str]:
    """``ip netns exec NS`` for commands that must run inside a network namespace."""
    return ["ip", "netns", "exec", netns] if netns else []


def check_netns(netns: str | None, bind_addr: str) -> None:
    """HostError unless ``netns`` exists: someone else makes it (``ip netns add``), not vmlab."""
    if netns is not None and not (Path("/run/netns") / netns).exists():
        raise HostError(
            f"network namespace {netns!r} does not exist",
            hint=f"create it first (ip netns add {netns}) with {bind_addr} inside",
        )


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout_s: float = CLI_TIMEOUT_S,
    netns: str | None = None,
    hint: str | None = None,
) -> str:
    """Run a Ceph tool (in ``netns`` if given) and return its stdout; CommandError on failure."""
    done = run(
        [*netns_prefix(netns), *argv],
        timeout_s=timeout_s,
        what=what,
        hint=hint,
        timeout_hint=hint or _HANG_HINT,
        missing_hint=INSTALL_HINT,
    )
    return done.out


def ceph_cli(
    info: ClusterInfo, args: Sequence[str], *, what: str, timeout_s: float = CLI_TIMEOUT_S
) -> str:
    """``ceph ARGS`` as the cluster's client; ``what`` names it in errors (``ceph WHAT``)."""
    argv = ["ceph", *info.ceph_args(), f"--connect-timeout={CONNECT_TIMEOUT_S}", *args]
    return run_tool(argv, what=f"ceph {what}", timeout_s=timeout_s, netns=info.netns)


def rbd_cli(
    info: ClusterInfo, args: Sequence[str], *, what: str, timeout_s: float = CLI_TIMEOUT_S
) -> str:
    """``rbd ARGS`` as the cluster's client; ``what`` names it in errors."""
    argv = ["rbd", *info.ceph_args(), f"--client-mount-timeout={CONNECT_TIMEOUT_S}", *args]
    return run_tool(argv, what=what, timeout_s=timeout_s, netns=info.netns)
