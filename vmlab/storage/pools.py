"""The RBD pools a run's disks name, settled before any guest starts.

``rbd`` is the pool name every Ceph user types, but a fresh cluster has only the pools someone
made. On vmlab's micro cluster (no ``cluster.conf``) vmlab makes the pools a spec names and
removes them again at the end of the run (only those it made, and only when empty). On a
user's cluster vmlab makes nothing: a missing pool fails the run before the first guest (or
the host baseline) starts, naming the pool, the cluster and what to do.

:func:`pools_needed` and :func:`plan_pools` are pure: which pools, and what to do about each;
:func:`list_pools`, :func:`remove_pool_if_empty` talk to a cluster.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlab.ceph.info import ClusterInfo
from vmlab.ceph.proc import ceph_cli, rbd_cli
from vmlab.errors import CommandError, HostError, VmlabError
from vmlab.plan import Case
from vmlab.spec import CephCluster, RbdBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolNeed:
    """One pool of one cluster and the disks (``case/disk``) that use it."""

    cluster: CephCluster
    pool: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class PoolPlan:
    """What to do about each needed pool: use it, make it (micro cluster), or refuse."""

    present: tuple[PoolNeed, ...] = ()
    create: tuple[PoolNeed, ...] = ()
    missing: tuple[PoolNeed, ...] = ()


def pools_needed(cases: Sequence[Case]) -> list[PoolNeed]:
    """The pools of every host-side RBD disk of ``cases`` (a guest that is its own Ceph client
    gets its own cluster, which makes its pools), per cluster (by conf) and pool, in order."""
    found: dict[tuple[Path | None, str], tuple[CephCluster, list[str]]] = {}
    for case in cases:
        for disk in case.variant.guest.disks:
            backend = disk.backend
            if not isinstance(backend, RbdBackend) or disk.guest_is_client:
                continue
            key = (backend.cluster.conf, backend.pool)
            users = found.setdefault(key, (backend.cluster, []))[1]
            users.append(f"{case.id}/{disk.name}")
    return [PoolNeed(cluster, pool, tuple(users)) for (_, pool), (cluster, users) in found.items()]


def plan_pools(
    needs: Sequence[PoolNeed], existing: Mapping[Path | None, frozenset[str]]
) -> PoolPlan:
    """Sort ``needs`` by what the clusters have (``existing``: pool names per cluster conf,
    ``None`` for the micro cluster): missing pools are made on the micro cluster only."""
    present, create, missing = [], [], []
    for need in needs:
        if need.pool in existing.get(need.cluster.conf, frozenset()):
            present.append(need)
        elif need.cluster.is_micro:
            create.append(need)
        else:
            missing.append(need)
    return PoolPlan(tuple(present), tuple(create), tuple(missing))


def missing_pools_error(
    missing: Sequence[PoolNeed], existing: Mapping[Path | None, frozenset[str]]
) -> HostError:
    """Why the run cannot start: every missing pool, on which cluster, used by which disks."""
    lines = []
    for need in missing:
        cluster = need.cluster
        have = ", ".join(sorted(existing.get(cluster.conf, frozenset()))) or "none"
        lines.append(
            f"RBD pool {need.pool!r} does not exist in the Ceph cluster of {cluster.conf} "
            f"(client.{cluster.client_id}; its pools: {have}), needed by "
            f"{_users(need.users)}"
        )
    first = missing[0].pool
    return HostError(
        "; ".join(lines),
        hint=(
            f"create it on that cluster (ceph osd pool create {first} && rbd pool init "
            f"{first}), or set backend.pool to a pool it has; vmlab makes pools only on its "
            "own micro cluster (backend.cluster without conf)"
        ),
    )


def _users(users: Sequence[str]) -> str:
    shown = ", ".join(users[:4])
    return shown + (f" and {len(users) - 4} more" if len(users) > 4 else "")


def list_pools(info: ClusterInfo, cluster: str) -> frozenset[str] | None:
    """The pool names of a cluster (``ceph osd pool ls``), or None when this client may not
    list them (its caps allow I/O on its pools only: then the pools go unchecked, as before);
    HostError naming ``cluster`` when it cannot be asked at all."""
    try:
        out = ceph_cli(info, ["osd", "pool", "ls", "--format", "json"], what="osd pool ls")
    except CommandError as exc:
        if exc.returncode == errno.EACCES or "EACCES" in exc.output:
            log.warning("client.%s may not list the pools of %s", info.client_id, cluster)
            return None
        raise _unreachable(cluster, exc) from exc
    except VmlabError as exc:
        raise _unreachable(cluster, exc) from exc
    try:
        names = json.loads(out or "[]")
    except ValueError as exc:
        raise HostError(f"`ceph osd pool ls` of {cluster} is not JSON: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HostError(f"`ceph osd pool ls` of {cluster} is not a list of names: {names!r}")
    return frozenset(names)


def _unreachable(cluster: str, exc: VmlabError) -> HostError:
    return HostError(
        f"cannot list the pools of the Ceph cluster of {cluster}: {exc}",
        hint=exc.hint or "check backend.cluster (conf, client_id, keyring)",
    )


def remove_pool_if_empty(info: ClusterInfo, pool: str) -> bool:
    """Delete a pool vmlab made, unless images are left in it (another run may use them);
    returns whether it was deleted."""
    left = json.loads(rbd_cli(info, ["ls", "--format", "json", pool], what="rbd ls") or "[]")
    if left:
        log.warning("keeping pool %s that vmlab made: it still holds %s", pool, ", ".join(left))
        return False
    ceph_cli(
        info,
        ["osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"],
        what="osd pool rm",
    )
    log.info("removed pool %s (made for the run)", pool)
    return True
