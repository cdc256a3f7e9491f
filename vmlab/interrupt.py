"""SIGTERM stops vmlab the way Ctrl-C does.

Python dies on SIGTERM without running ``finally`` blocks or ExitStack exits, so QEMU,
qemu-storage-daemon, Ceph daemons, SPDK targets, taps, namespaces and reserved hugepages would
outlive a vmlab stopped by a supervisor, ``timeout``, ``kill`` or Ansible. Inside
:func:`sigterm_interrupts`, SIGTERM raises KeyboardInterrupt instead: the Ctrl-C path runs
(everything stopped in order, finished cases kept, the run resumable).

Only the first SIGTERM raises. One sent again while that cleanup runs is logged and
otherwise ignored, so it cannot cut the cleanup short and leak what is still being stopped;
SIGKILL is the way to stop vmlab without its cleanup. (A second Ctrl-C still raises, as
Python's own SIGINT handler does.)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (once) in the main thread until the block exits; the
    previous handler is restored after. Outside the main thread (where Python cannot install
    signal handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = False

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        nonlocal received
        if received:
            log.warning("SIGTERM again: still stopping what vmlab started (SIGKILL skips that)")
            return
        received = True
        log.warning("SIGTERM: stopping as on Ctrl-C")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        # None: a handler not installed from Python; the default is what it did
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
