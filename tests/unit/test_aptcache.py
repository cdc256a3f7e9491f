"""apt's resolution of the default image's packages is asked once, then kept until apt's
state (its lists, dpkg's status, its configuration) changes."""

from __future__ import annotations

import os
from pathlib import Path

from vmlab.guest.image.aptcache import cached_resolve
from vmlab.guest.image.debs import DebRecord

FIO = DebRecord("fio", "3.33-3", "pool/main/f/fio/fio_3.33-3_amd64.deb", "ab" * 32, 500, "libc6")


def test_apt_is_asked_again_only_when_its_state_changes(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_dists_bookworm_main_Packages").write_text("Package: fio\n")
    status = tmp_path / "status"
    status.write_text("Package: libc6\n")
    cache = tmp_path / "cache" / ".apt-resolved.json"
    asked: list[int] = []

    def resolve() -> list[DebRecord]:
        asked.append(1)
        return [FIO]

    def get() -> list[DebRecord]:
        return cached_resolve(cache, resolve, roots=(lists, status, tmp_path / "no-etc-apt"))

    assert get() == [FIO] and len(asked) == 1
    assert get() == [FIO] and len(asked) == 1  # from the cache: apt is not run
    (lists / "deb.debian.org_dists_bookworm_main_Packages").write_text("Package: fio\nV: 2\n")
    assert get() == [FIO] and len(asked) == 2  # `apt-get update` changed the lists
    os.utime(status, ns=(1, 1))
    assert get() == [FIO] and len(asked) == 3  # an install changed dpkg's status
    cache.write_text("{not json")
    assert get() == [FIO] and len(asked) == 4  # a damaged cache is asked again, not trusted
    assert get() == [FIO] and len(asked) == 4
