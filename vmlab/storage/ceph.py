"""The Ceph clusters and RBD images a run uses.

The micro cluster is brought up when a spec needs it (and taken down again if this run started
it); images vmlab creates for the run, and krbd mappings it makes, are removed at its end. A
user's own cluster is reached by its ceph.conf, client id and keyring.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vmlab.ceph.bootstrap import ensure_pool
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.info import ClusterInfo, read_key
from vmlab.ceph.rbd import RbdImages
from vmlab.errors import VmlabError
from vmlab.paths import state_dir
from vmlab.plan import Case
from vmlab.render.model import DiskSource, RbdTarget
from vmlab.spec import CephCluster, RbdBackend
from vmlab.storage.pools import (
    list_pools,
    missing_pools_error,
    plan_pools,
    pools_needed,
    remove_pool_if_empty,
)

log = logging.getLogger(__name__)

KRBD_PREVIEW = Path("/dev/rbd<N>")


def micro_cluster() -> MicroCluster:
    """vmlab's micro cluster, the one a spec without ``cluster.conf`` means."""
    return MicroCluster(state_dir() / "ceph")


def client_info(cluster: CephCluster) -> ClusterInfo:
    """How a client reaches a user's own cluster (the spec names its conf)."""
    assert cluster.conf is not None
    keyring = cluster.keyring or Path(f"/etc/ceph/ceph.client.{cluster.client_id}.keyring")
    return ClusterInfo(
        conf_path=cluster.conf,
        keyring_path=keyring,
        fsid="",
        mon_addr="",
        pool="",
        client_id=cluster.client_id,
        state_dir=state_dir() / "ceph-clients" / _slug(str(cluster.conf)),
    )


def image_name(run_id: str, disk_name: str, backend: RbdBackend) -> str:
    """The spec's image, or one made for this run and this disk."""
    return backend.image or f"vmlab-{run_id}-{disk_name}"[:96]


def rbd_source(info: ClusterInfo, pool: str, image: str) -> DiskSource:
    target = RbdTarget(
        pool=pool, image=image, conf=info.conf_path, user=info.client_id, keyring=info.keyring_path
    )
    return DiskSource(path=Path(f"rbd:{pool}/{image}"), format="raw", protocol="rbd", rbd=target)


def write_key_file(target: RbdTarget, path: Path) -> RbdTarget:
    """The client's key, base64 as in its keyring, in a private file QEMU reads with
    ``-object secret,format=base64,file=``: the keyring the spec names is what QEMU uses, even
    when the cluster's conf names another (or none)."""
    raw = read_key(target.keyring, f"client.{target.user}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        fh.write(base64.b64encode(raw))
    return replace(target, key_file=path)


def preview_rbd(disk_name: str, backend: RbdBackend, *, run_id: str) -> DiskSource:
    """The source a run would use, without touching any cluster."""
    cluster = backend.cluster
    info = micro_cluster().expected_info() if cluster.is_micro else client_info(cluster)
    name = image_name(run_id, disk_name, backend)
    if backend.krbd:
        return DiskSource(path=KRBD_PREVIEW, format="raw", protocol="host_device")
    return rbd_source(info, backend.pool, name)


class CephSessions:
    """The clusters a run talks to, the images it made and the devices it mapped."""

    def __init__(self, *, run_id: str) -> None:
        self.run_id = run_id
        self.infos: dict[Path | None, ClusterInfo] = {}
        self.started_micro: MicroCluster | None = None
        self.images: dict[tuple[Path | None, str, str], str] = {}
        self.created: list[tuple[ClusterInfo, str, str]] = []
        self.mapped: dict[tuple[Path, str, str], Path] = {}
        self.devices: list[tuple[ClusterInfo, Path]] = []
        self.created_pools: list[tuple[ClusterInfo, str]] = []

    def prepare(self, cases: Sequence[Case]) -> None:
        """Before any guest starts: every pool the cases' RBD disks name exists. Users'
        clusters are asked first, and a pool missing there raises HostError (naming the pool
        and the cluster) before the micro cluster is even started; on the micro cluster
        missing pools are made, and :meth:`cleanup` removes them again."""
        needs = pools_needed(cases)
        users = [n for n in needs if not n.cluster.is_micro]
        micro = [n for n in needs if n.cluster.is_micro]
        for group in (users, micro):
            existing: dict[Path | None, frozenset[str]] = {}
            unlisted: set[Path | None] = set()  # the client may not list them: unchecked
            for need in group:
                conf = need.cluster.conf
                if conf not in existing and conf not in unlisted:
                    where = "vmlab's micro cluster" if conf is None else str(conf)
                    pools = list_pools(self.info(need.cluster), where)
                    if pools is None:
                        unlisted.add(conf)
                    else:
                        existing[conf] = pools
            plan = plan_pools([n for n in group if n.cluster.conf not in unlisted], existing)
            if plan.missing:
                raise missing_pools_error(plan.missing, existing)
            for need in plan.create:
                info = self.info(need.cluster)
                log.info("creating pool %s on the micro cluster for %s", need.pool, need.users)
                ensure_pool(info, need.pool)
                self.created_pools.append((info, need.pool))

    def info(self, cluster: CephCluster) -> ClusterInfo:
        if cluster.conf in self.infos:
            return self.infos[cluster.conf]
        if cluster.is_micro:
            micro = micro_cluster()
            was_running = micro.status().running
            info = micro.up()
            if not was_running:
                self.started_micro = micro
        else:
            info = client_info(cluster)
        self.infos[cluster.conf] = info
        return info

    def image(self, disk_name: str, backend: RbdBackend) -> DiskSource:
        info = self.info(backend.cluster)
        key = (backend.cluster.conf, backend.pool, backend.image or f"@{disk_name}")
        if key not in self.images:
            name = image_name(self.run_id, disk_name, backend)
            images = RbdImages(info)
            if images.get(backend.pool, name) is None:
                images.create(backend.pool, name, backend.size_bytes)
                self.created.append((info, backend.pool, name))
            self.images[key] = name
        name = self.images[key]
        if backend.krbd:
            mapping = (info.conf_path, backend.pool, name)
            if mapping not in self.mapped:
                self.mapped[mapping] = RbdImages(info).map_krbd(backend.pool, name)
                self.devices.append((info, self.mapped[mapping]))
            return DiskSource(path=self.mapped[mapping], format="raw", protocol="host_device")
        return rbd_source(info, backend.pool, name)

    def cleanup(self) -> None:
        try:
            for info, device in reversed(self.devices):
                try:
                    RbdImages(info).unmap_krbd(device)
                except VmlabError as exc:
                    log.warning("could not unmap %s: %s", device, exc)
            for info, pool, name in reversed(self.created):
                try:
                    RbdImages(info).remove(pool, name)
                except VmlabError as exc:
                    log.warning("could not remove RBD image %s/%s: %s", pool, name, exc)
            for info, pool in reversed(self.created_pools):
                try:
                    remove_pool_if_empty(info, pool)
                except VmlabError as exc:
                    log.warning("could not remove pool %s that vmlab made: %s", pool, exc)
        finally:
            if self.started_micro is not None:
                self.started_micro.down()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[-60:]
