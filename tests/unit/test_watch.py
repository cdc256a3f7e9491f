"""The case watchdog: a server that died is why the case failed, and the blocked call is
released at once (the SSH session is closed) instead of waiting for fio's own timeout."""

from __future__ import annotations

import threading

import pytest

from vmlab.bench.watch import Watchdog
from vmlab.errors import GuestError, LaunchError, VmlabError


def test_a_dead_server_trips_the_watchdog_and_replaces_the_error() -> None:
    dead = threading.Event()
    released = threading.Event()

    def watcher() -> VmlabError | None:
        return LaunchError("SPDK vhost (pid 1) was killed by SIGKILL") if dead.is_set() else None

    with (
        pytest.raises(LaunchError, match="killed by SIGKILL") as err,
        Watchdog([watcher], interval_s=0.01) as watchdog,
        watchdog.guard(),
    ):
        watchdog.on_trip(released.set)  # what closes the SSH session
        dead.set()
        assert released.wait(timeout=5), "the blocked call was never released"
        raise GuestError("fio: the SSH session closed")
    assert isinstance(err.value.__cause__, GuestError)


def test_errors_of_their_own_pass_through_and_late_actions_run_at_once() -> None:
    ran: list[str] = []
    with (
        pytest.raises(GuestError, match="fio exited 1"),
        Watchdog([lambda: None]) as watchdog,
        watchdog.guard(),
    ):
        raise GuestError("fio exited 1")
    tripped = Watchdog([lambda: LaunchError("gone")])
    assert tripped.check() is not None
    tripped.on_trip(lambda: ran.append("closed"))
    assert ran == ["closed"]
