"""What the cluster says about itself: ``ceph status``, ``ceph df``, ``ceph osd pool ls
detail`` and ``rbd ls`` parsed into a ClusterReport; with the daemons, a ClusterStatus."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.ceph.daemons import DaemonStatus
from vmlab.ceph.info import ClusterInfo, ImageRef
from vmlab.ceph.proc import ceph_cli, rbd_cli
from vmlab.errors import VmlabError


@dataclass(frozen=True)
class PoolStatus:
    """One pool, from ``ceph osd pool ls detail`` and ``ceph df``."""

    name: str
    pool_id: int
    size: int
    min_size: int
    pg_num: int
    applications: tuple[str, ...]
    stored_bytes: int
    objects: int
    max_avail_bytes: int


@dataclass(frozen=True)
class ClusterReport:
    """What the monitor and manager say: parsed from ``ceph status/df/osd pool ls detail``."""

    fsid: str
    health: str  # HEALTH_OK | HEALTH_WARN | HEALTH_ERR
    health_checks: tuple[str, ...]  # "CODE: summary"
    num_osds: int
    num_up_osds: int
    num_in_osds: int
    pg_states: tuple[tuple[str, int], ...]
    used_bytes: int
    avail_bytes: int
    total_bytes: int
    mgr_available: bool
    pools: tuple[PoolStatus, ...]


@dataclass(frozen=True)
class ClusterStatus:
    """The daemons as /proc and their admin sockets see them, and what the cluster reports."""

    state_dir: Path
    conf_path: Path
    exists: bool
    daemons: tuple[DaemonStatus, ...]
    report: ClusterReport | None = None
    images: tuple[ImageRef, ...] = ()
    problem: str | None = None  # why ``report`` is missing, when a daemon runs

    @property
    def running(self) -> bool:
        return all(d.alive for d in self.daemons)

    @property
    def health(self) -> str:
        return self.report.health if self.report is not None else "UNKNOWN"

    @property
    def pools(self) -> tuple[PoolStatus, ...]:
        return self.report.pools if self.report is not None else ()


def _health_checks(health: Mapping[str, Any]) -> tuple[str, ...]:
    checks = health.get("checks") or {}
    out = []
    for code, check in sorted(checks.items()):
        summary = (check.get("summary") or {}).get("message", "")
        out.append(f"{code}: {summary}" if summary else str(code))
    return tuple(out)


def parse_cluster_report(status_json: str, df_json: str, pools_json: str) -> ClusterReport:
    """Parse ``ceph status``, ``ceph df`` and ``ceph osd pool ls detail`` (all ``-f json``)."""
    try:
        st = json.loads(status_json)
        df = json.loads(df_json)
        detail = json.loads(pools_json)
        health = st.get("health") or {}
        pgmap = st.get("pgmap") or {}
        osdmap = st.get("osdmap") or {}
        osdmap = osdmap.get("osdmap", osdmap)  # nested one level deeper before Pacific
        usage = {p["name"]: p.get("stats") or {} for p in df.get("pools", [])}
        pools = []
        for p in detail:
            stats = usage.get(p["pool_name"], {})
            pools.append(
                PoolStatus(
                    name=p["pool_name"],
                    pool_id=int(p["pool_id"]),
                    size=int(p["size"]),
                    min_size=int(p["min_size"]),
                    pg_num=int(p["pg_num"]),
                    applications=tuple(sorted(p.get("application_metadata") or {})),
                    stored_bytes=int(stats.get("stored", 0)),
                    objects=int(stats.get("objects", 0)),
                    max_avail_bytes=int(stats.get("max_avail", 0)),
                )
            )
        totals = df.get("stats") or {}
        return ClusterReport(
            fsid=str(st.get("fsid", "")),
            health=str(health.get("status", "UNKNOWN")),
            health_checks=_health_checks(health),
            num_osds=int(osdmap.get("num_osds", 0)),
            num_up_osds=int(osdmap.get("num_up_osds", 0)),
            num_in_osds=int(osdmap.get("num_in_osds", 0)),
            pg_states=tuple(
                (str(s["state_name"]), int(s["count"])) for s in pgmap.get("pgs_by_state", [])
            ),
            used_bytes=int(totals.get("total_used_raw_bytes", pgmap.get("bytes_used", 0))),
            avail_bytes=int(totals.get("total_avail_bytes", pgmap.get("bytes_avail", 0))),
            total_bytes=int(totals.get("total_bytes", pgmap.get("bytes_total", 0))),
            mgr_available=bool((st.get("mgrmap") or {}).get("available", False)),
            pools=tuple(pools),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VmlabError(
            f"unexpected output from the ceph CLI: {exc!r}",
            hint="is this Ceph Pacific (16.2, Debian 12)? other releases may differ",
        ) from exc


def read_report(info: ClusterInfo, timeout_s: float, *, mgr_alive: bool) -> ClusterReport:
    """Ask the monitor (and the manager, when ``mgr_alive``) what the cluster looks like."""
    # `ceph df` is served by the mgr and would wait for one: skip it when the mgr is down.
    df = "{}"
    if mgr_alive:
        df = ceph_cli(info, ["df", "-f", "json"], what="df", timeout_s=timeout_s)
    return parse_cluster_report(
        ceph_cli(info, ["status", "-f", "json"], what="status", timeout_s=timeout_s),
        df,
        ceph_cli(
            info,
            ["osd", "pool", "ls", "detail", "-f", "json"],
            what="pools",
            timeout_s=timeout_s,
        ),
    )


def list_images(info: ClusterInfo, report: ClusterReport, timeout_s: float) -> tuple[ImageRef, ...]:
    """The images (not snapshots) in each pool of ``report`` that serves rbd, whoever made them."""
    images: list[ImageRef] = []
    for pool in report.pools:
        if "rbd" not in pool.applications:
            continue
        out = rbd_cli(
            info,
            ["ls", "--long", "--format", "json", "--pool", pool.name,
             "--rados-osd-op-timeout=10"],
            what=f"rbd ls {pool.name}", timeout_s=timeout_s,
        )  # fmt: skip
        for entry in json.loads(out or "[]"):
            if "snapshot" in entry:
                continue
            parent = entry.get("parent")
            parent_spec = None
            if isinstance(parent, dict):
                parent_spec = f"{parent.get('pool')}/{parent.get('image')}@{parent.get('snapshot')}"
            images.append(ImageRef(pool.name, str(entry["image"]), int(entry["size"]), parent_spec))
    return tuple(images)
