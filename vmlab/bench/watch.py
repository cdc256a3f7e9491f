"""A case's watchdog: what serves its disks can die while the guest runs (an SPDK target
killed mid-fio), and the guest's I/O then hangs until fio's own timeout, minutes later.

The watchdog polls the servers' watchers; the first that reports a failure trips it: it runs
the trip actions (close the SSH session, so the blocked fio call returns at once) and
:meth:`Watchdog.guard` raises that failure in place of whatever error the case then hits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from vmlab.errors import VmlabError

log = logging.getLogger(__name__)

Watcher = Callable[[], VmlabError | None]


class Watchdog:
    def __init__(self, watchers: Sequence[Watcher], *, interval_s: float = 0.25) -> None:
        self.watchers = watchers
        self.interval_s = interval_s
        self.tripped: VmlabError | None = None
        self._actions: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        if self.watchers:
            self._thread = threading.Thread(target=self._loop, name="vmlab-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def on_trip(self, action: Callable[[], None]) -> None:
        """Run ``action`` when the watchdog trips (at once if it has)."""
        with self._lock:
            if self.tripped is None:
                self._actions.append(action)
                return
        action()

    def check(self) -> VmlabError | None:
        """Poll the watchers once; trips on the first failure."""
        if self.tripped is not None:
            return self.tripped
        for watcher in self.watchers:
            failure = watcher()
            if failure is not None:
                self._trip(failure)
                return failure
        return None

    def _trip(self, failure: VmlabError) -> None:
        with self._lock:
            if self.tripped is not None:
                return
            self.tripped = failure
            actions, self._actions = self._actions, []
        log.warning("%s: stopping the case", failure)
        for action in actions:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a trip action must not kill the thread
                log.debug("watchdog action failed: %r", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.check() is not None:
                    return
            except Exception as exc:  # noqa: BLE001 - a watcher's bug must not stop a case
                log.debug("watcher failed: %r", exc)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Raise the failure the watchdog saw instead of the error it caused in the block."""
        try:
            yield
        except VmlabError as exc:
            failure = self.check()
            if failure is not None and failure is not exc:
                raise failure from exc
            raise
