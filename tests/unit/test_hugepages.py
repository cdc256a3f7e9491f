"""A run's hugepage reservation, on a stand-in sysfs folder (plain files: what is written is
what reads back, so a "kernel" that grants fewer pages is a file rewritten behind vmlab).
The real pool is exercised by tests/integration/test_spdk_target.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.hugepages import hugetlbfs_mounts, pages_for, pool_state, reserved


def sysfs(tmp_path: Path, *, total: int, free: int, resv: int = 0, writable: bool = True) -> Path:
    path = tmp_path / "hugepages-2048kB"
    path.mkdir()
    for name, value in (("nr", total), ("free", free), ("resv", resv)):
        (path / f"{name}_hugepages").write_text(f"{value}\n")
    if not writable:
        (path / "nr_hugepages").chmod(0o444)
    return path


def test_pages_for_rounds_up() -> None:
    assert (pages_for(512), pages_for(513), pages_for(0)) == (256, 257, 0)


def test_a_run_adds_its_pages_and_gives_back_only_those(tmp_path: Path) -> None:
    fake = sysfs(tmp_path, total=100, free=100)
    with reserved(256, sysfs=fake) as added:
        assert added == 256
        assert pool_state(fake).total == 356
        (fake / "nr_hugepages").write_text("400\n")  # someone else reserved 44 meanwhile
    assert pool_state(fake).total == 144  # theirs stay, only vmlab's 256 went back


def test_pages_are_given_back_on_failure_and_interrupt(tmp_path: Path) -> None:
    fake = sysfs(tmp_path, total=8, free=8)
    for error in (RuntimeError("case failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)), reserved(16, sysfs=fake):
            assert pool_state(fake).total == 24
            raise error
        assert pool_state(fake).total == 8


def test_nothing_needed_touches_nothing(tmp_path: Path) -> None:
    fake = sysfs(tmp_path, total=3, free=1, writable=False)
    with reserved(0, sysfs=fake) as added:
        assert added == 0


def test_without_the_right_to_reserve_the_pages_must_be_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = sysfs(tmp_path, total=300, free=200, resv=50, writable=False)
    monkeypatch.setattr("vmlab.hugepages.can_reserve", lambda sysfs: False)  # root may write
    with reserved(150, sysfs=fake) as added:
        assert added == 0
    with (
        pytest.raises(HostError, match="needs 151 free 2 MiB hugepages") as err,
        reserved(151, sysfs=fake),
    ):
        pass
    assert err.value.hint is not None and "echo 301 > " in err.value.hint


def test_hugetlbfs_mounts_of_2m_pages(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\n"
        "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
        "none /mnt/1g hugetlbfs rw,pagesize=1024M 0 0\n"
        "nodev /run/v\\040h hugetlbfs rw,mode=700 0 0\n"
    )
    assert hugetlbfs_mounts(mounts) == [Path("/dev/hugepages"), Path("/run/v h")]
