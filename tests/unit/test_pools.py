"""RBD pools a spec names: made on the micro cluster (and removed after), refused before any
guest starts on a user's cluster that lacks them.

The Ceph CLI is replaced by an in-memory cluster that answers the exact commands vmlab sends
(``ceph osd pool ls/create/rm``, ``rbd ls``); tests/integration/test_rbd.py runs the same
paths against a real micro cluster."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlab.ceph import proc
from vmlab.ceph.info import ClusterInfo
from vmlab.errors import CommandError, HostError
from vmlab.plan import Case, plan
from vmlab.proc import Completed
from vmlab.spec import CephCluster, parse_spec
from vmlab.storage.ceph import CephSessions
from vmlab.storage.pools import (
    PoolNeed,
    missing_pools_error,
    plan_pools,
    pools_needed,
)

USER_CONF = Path("/etc/ceph/lab.conf")


def cases(*disks: dict[str, Any], nics: bool = False) -> list[Case]:
    guest: dict[str, Any] = {"disks": list(disks)}
    if nics:
        guest["nics"] = [{"name": "lab0"}]
    spec = {"name": "pools", "guest": guest, "jobs": [{"name": "j", "rw": "randread"}]}
    return plan(parse_spec(yaml.safe_load(yaml.safe_dump(spec))))


def rbd(pool: str = "rbd", *, conf: Path | None = None, **extra: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "rbd", "pool": pool, **extra}
    if conf is not None:
        backend["cluster"] = {"conf": str(conf), "client_id": "bench"}
    return backend


# ---- which pools, and what to do about them (pure)


def test_pools_needed_groups_host_side_disks_by_cluster_and_pool() -> None:
    got = pools_needed(
        cases(
            {
                "name": "data",
                "model": ["virtio-blk", "vhost-user-blk"],
                "backend": rbd("rbd", image="seedimg", size="2G"),
            },
            {"name": "logs", "backend": rbd("rbd", conf=USER_CONF)},
            {"name": "raw", "backend": {"type": "file", "size": "1G"}},
        )
    )
    assert [(n.cluster.conf, n.pool, n.users) for n in got] == [
        (None, "rbd", ("virtio-blk/data", "vhost-user-blk/data")),
        (USER_CONF, "rbd", ("virtio-blk/logs", "vhost-user-blk/logs")),
    ]


def test_a_guest_that_is_its_own_ceph_client_needs_no_host_pool() -> None:
    got = pools_needed(cases({"name": "data", "target": "guest", "backend": rbd("rbd")}, nics=True))
    assert got == []


def test_plan_makes_missing_pools_on_the_micro_cluster_only() -> None:
    micro = PoolNeed(CephCluster(), "rbd", ("a/data",))
    micro_default = PoolNeed(CephCluster(), "vmlab", ("a/data",))
    user = PoolNeed(CephCluster(conf=USER_CONF), "rbd", ("a/logs",))
    user_there = PoolNeed(CephCluster(conf=USER_CONF), "volumes", ("a/vol",))
    existing = {None: frozenset({"vmlab"}), USER_CONF: frozenset({"volumes"})}
    got = plan_pools([micro, micro_default, user, user_there], existing)
    assert got.create == (micro,)
    assert got.present == (micro_default, user_there)
    assert got.missing == (user,)


def test_missing_pool_error_names_pool_cluster_client_users_and_a_hint() -> None:
    need = PoolNeed(CephCluster(conf=USER_CONF, client_id="bench"), "rbd", ("a/data", "b/data"))
    exc = missing_pools_error([need], {USER_CONF: frozenset({"volumes", "images"})})
    text = str(exc)
    for part in ("'rbd'", str(USER_CONF), "client.bench", "images, volumes", "a/data, b/data"):
        assert part in text, part
    assert exc.hint is not None
    assert "ceph osd pool create rbd" in exc.hint and "backend.pool" in exc.hint


# ---- the sessions against an in-memory cluster


class FakeCeph:
    """The commands vmlab sends, answered from a dict of pool -> images per conf path."""

    def __init__(self, pools: dict[Path, dict[str, list[str]]]) -> None:
        self.pools = pools
        self.calls: list[tuple[Path, tuple[str, ...]]] = []
        self.denied: set[Path] = set()  # clusters whose client may not list pools

    def run(self, argv: Sequence[str], **_: object) -> Completed:
        conf = Path(argv[argv.index("--conf") + 1])
        rest = list(argv[7:])  # after `ceph|rbd --conf C --id I --keyring K`
        if "--format" in rest:
            del rest[rest.index("--format") : rest.index("--format") + 2]
        args = tuple(a for a in rest if not a.startswith("--"))
        self.calls.append((conf, args))
        pools = self.pools[conf]
        out: object = ""
        if args == ("osd", "pool", "ls"):
            if conf in self.denied:
                raise CommandError(
                    "ceph osd pool ls failed", argv=argv, returncode=13, output="Error EACCES"
                )
            out = sorted(pools)
        elif args[:3] == ("osd", "pool", "create"):
            pools.setdefault(args[3], [])
        elif args[:3] == ("osd", "pool", "rm"):
            del pools[args[3]]
        elif args[0] == "ls":
            out = pools[args[1]]
        elif args[:4] != ("osd", "pool", "application", "enable"):
            raise AssertionError(f"unexpected command {argv}")
        text = out if isinstance(out, str) else json.dumps(out)
        return Completed(tuple(argv), 0, text.encode(), b"")

    def changes(self) -> list[tuple[str, ...]]:
        return [
            a for _, a in self.calls if a[:3] in (("osd", "pool", "create"), ("osd", "pool", "rm"))
        ]


MICRO_CONF = Path("/state/ceph/ceph.conf")
OTHER_CONF = Path("/etc/ceph/other.conf")


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> tuple[CephSessions, FakeCeph, list[Path | None]]:
    fake = FakeCeph(
        {
            MICRO_CONF: {"vmlab": []},
            USER_CONF: {"volumes": ["vol1"]},
            OTHER_CONF: {"rbd": []},
        }
    )
    monkeypatch.setattr(proc, "run", fake.run)
    reached: list[Path | None] = []
    sessions = CephSessions(run_id="r1")

    def info(cluster: CephCluster) -> ClusterInfo:
        reached.append(cluster.conf)
        conf = cluster.conf or MICRO_CONF
        return ClusterInfo(conf, conf.with_name("keyring"), "", "", "", Path("/state"))

    monkeypatch.setattr(sessions, "info", info)
    return sessions, fake, reached


def test_the_micro_cluster_gets_the_pool_the_spec_names_and_loses_it_after(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, _ = sessions
    s.prepare(cases({"name": "data", "backend": rbd("rbd", image="seedimg", size="2G")}))
    assert "rbd" in fake.pools[MICRO_CONF]
    s.cleanup()
    assert set(fake.pools[MICRO_CONF]) == {"vmlab"}
    assert fake.changes()[0][:4] == ("osd", "pool", "create", "rbd")
    assert fake.changes()[1] == ("osd", "pool", "rm", "rbd", "rbd")


def test_a_pool_that_was_there_is_never_removed(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, _ = sessions
    s.prepare(cases({"name": "data", "backend": rbd("vmlab")}))
    s.cleanup()
    assert fake.changes() == []
    assert set(fake.pools[MICRO_CONF]) == {"vmlab"}


def test_a_made_pool_that_still_holds_images_is_kept(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, _ = sessions
    s.prepare(cases({"name": "data", "backend": rbd("rbd")}))
    fake.pools[MICRO_CONF]["rbd"].append("someone-elses")  # another run's image
    s.cleanup()
    assert fake.pools[MICRO_CONF]["rbd"] == ["someone-elses"]


def test_a_users_cluster_without_the_pool_fails_before_the_micro_cluster_starts(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, reached = sessions
    with pytest.raises(HostError) as caught:
        s.prepare(
            cases(
                {"name": "data", "backend": rbd("rbd")},  # micro cluster
                {"name": "logs", "backend": rbd("rbd", conf=USER_CONF)},
            )
        )
    assert "'rbd'" in str(caught.value) and str(USER_CONF) in str(caught.value)
    assert reached == [USER_CONF]  # the micro cluster was never brought up
    assert fake.changes() == []
    assert set(fake.pools[USER_CONF]) == {"volumes"}


def test_a_users_cluster_with_the_pool_is_used_as_it_is(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, _ = sessions
    s.prepare(cases({"name": "data", "backend": rbd("volumes", conf=USER_CONF)}))
    s.cleanup()
    assert fake.changes() == []
    assert fake.pools[USER_CONF] == {"volumes": ["vol1"]}


def test_only_the_pools_really_missing_are_named_when_several_clusters_are_used(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, _, _ = sessions
    with pytest.raises(HostError) as caught:
        s.prepare(
            cases(
                {"name": "data", "backend": rbd("rbd", conf=USER_CONF)},  # missing there
                {"name": "logs", "backend": rbd("rbd", conf=OTHER_CONF)},  # there
            )
        )
    text = str(caught.value)
    assert str(USER_CONF) in text and "default/data" in text
    assert str(OTHER_CONF) not in text and "logs" not in text


def test_a_client_that_may_not_list_pools_is_not_refused(
    sessions: tuple[CephSessions, FakeCeph, list[Path | None]],
) -> None:
    s, fake, _ = sessions
    fake.denied.add(USER_CONF)
    s.prepare(cases({"name": "data", "backend": rbd("rbd", conf=USER_CONF)}))
    s.cleanup()
    assert fake.changes() == []
