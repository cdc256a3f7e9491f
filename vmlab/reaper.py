"""Run a daemon under a process that reaps what it leaves behind.

Where PID 1 reaps nothing (containers, microVMs, this CI), a daemon's daemonized children
(libvirtd's capability probes run QEMU with -daemonize) end as zombies that still answer
kill(pid, 0): libvirtd then waits for each probe to die, for seconds, again and again. Run
as `python -m vmlab.reaper CMD...`, this process becomes a child subreaper, runs CMD in the
foreground, reaps every orphan, forwards SIGTERM/SIGINT to CMD and exits with its status.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def run(argv: list[str]) -> int:
    become_subreaper()
    child = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    status = 0
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wait_status)
            child.returncode = status
            # keep reaping orphans the daemon left until none remain
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def spawn(argv: list[str], *, log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` under a reaper in its own session; stop it with .terminate()."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vmlab.reaper", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


if __name__ == "__main__":  # pragma: no cover - exercised by the libvirt fixture
    if len(sys.argv) < 2:
        sys.exit("usage: python -m vmlab.reaper COMMAND [ARG...]")
    sys.exit(run(sys.argv[1:]))
