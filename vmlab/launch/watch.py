"""Watching a guest boot, for every launcher: the serial marker, an init that failed, a kernel
panic, a QEMU that went away, and a KVM that failed under the guest.

A KVM failure is raised as :class:`AccelError`, whatever the launcher, so that a run can tell
"this /dev/kvm cannot run the guest" (switch to TCG) from "this guest is broken" (fail the case).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from vmlab.errors import AccelError, LaunchError

POLL_S = 0.02
"""How often the serial log is read for the marker: its mean delay is half of this (at 0.1 s
boots measured in steps of 0.1 s). Reading a console log is cheap; the checks are not."""
CHECK_S = 0.1
"""How often QEMU's liveness and KVM failures are checked meanwhile."""

_KVM_FAILURES = (
    re.compile(r"KVM internal error\. Suberror: \d+"),
    re.compile(r"error: failed to set MSR \S+( to \S+)?"),
    re.compile(r"KVM: entry failed, hardware error \S+"),
    re.compile(r"error: kvm run failed .*"),
    re.compile(r"kvm_\w+: Assertion .* failed\."),
    re.compile(r"failed to initialize kvm: .*", re.IGNORECASE),
    re.compile(r"Could not access KVM kernel module: .*"),
)


def kvm_failure(qemu_output: str) -> str | None:
    """QEMU's own words when KVM failed under it (one line), or None.

    ``KVM internal error. Suberror: 1`` is followed by register dumps; its kind (``emulation
    failure``) comes a few lines later and is kept: that is what a person searches for."""
    lines = qemu_output.splitlines()
    for number, line in enumerate(lines):
        for pattern in _KVM_FAILURES:
            match = pattern.search(line)
            if match is None:
                continue
            found = match.group(0)
            if found.startswith("KVM internal error"):
                kind = next(
                    (ln.strip() for ln in lines[number + 1 : number + 12] if "failure" in ln),
                    None,
                )
                if kind:
                    found = f"{found} ... {kind}"
            return found
    return None


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def check_kvm(accel: str, qemu_log: Path | None, when: str) -> None:
    """Raise AccelError if the guest runs under KVM and QEMU's output says KVM failed."""
    if accel != "kvm":
        return
    failure = kvm_failure(_read(qemu_log))
    if failure is not None:
        raise AccelError(f"KVM failed {when}: {failure}", accel=accel, detail=failure, log=qemu_log)


_PANIC = b"Kernel panic"


def _read_more(path: Path, data: bytearray) -> int:
    """Append to ``data`` what ``path`` holds beyond its first ``len(data)`` bytes; returns
    where the new bytes start. Polled every POLL_S: the serial log is read once, not again
    from its start at each poll (a cloud guest's console runs to hundreds of KB)."""
    start = len(data)
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data += fh.read()
    except FileNotFoundError:  # QEMU has not made it yet
        pass
    return start


def wait_marker(
    serial_log: Path,
    marker: str,
    *,
    failed: str | None,
    timeout_s: float,
    started_at: float,
    accel: str,
    qemu_log: Path | None,
    check_alive: Callable[[str], None],
    explain_timeout: Callable[[], str] | None = None,
) -> float:
    """Wait until ``marker`` appears on the serial console; returns seconds since launch.

    ``explain_timeout()``, asked once when the deadline passes, says what the guest may be
    waiting on (a vhost-user back end); it is added to the timeout's message.

    ``check_alive(when)`` raises when QEMU (or the domain) is gone. Under KVM, QEMU's log is read
    too: a KVM internal error leaves QEMU paused, alive and silent, and would otherwise only
    show as a timeout; a guest that printed nothing at all by the deadline is reported as a KVM
    failure as well."""
    deadline = time.monotonic() + timeout_s
    needle, bad = marker.encode(), failed.encode() if failed else None
    overlap = max(len(needle), len(bad or b""), len(_PANIC)) - 1  # a word cut between reads
    when = f"before the guest printed {marker}"
    checked = -CHECK_S
    data = bytearray()
    while True:
        start = max(_read_more(serial_log, data) - overlap, 0)  # only what is new is searched
        if data.find(needle, start) >= 0:
            return time.monotonic() - started_at
        if bad and (at := data.find(bad, start)) >= 0:
            line = bytes(data[at:]).split(b"\n", 1)[0].decode(errors="replace")
            raise LaunchError(f"guest init failed: {line.strip()}", log=serial_log)
        if data.find(_PANIC, start) >= 0:
            raise LaunchError("guest kernel panicked", log=serial_log)
        now = time.monotonic()
        if now - checked < CHECK_S and now <= deadline:
            time.sleep(POLL_S)
            continue
        checked = now
        check_kvm(accel, qemu_log, when)
        try:
            check_alive(when)
        except LaunchError:
            check_kvm(accel, qemu_log, when)  # QEMU aborted on a KVM-only failure
            raise
        if time.monotonic() > deadline:
            if accel == "kvm" and not data.strip():
                detail = f"the guest printed nothing under KVM within {timeout_s:.0f} s"
                raise AccelError(detail, accel=accel, detail=detail, log=qemu_log)
            why = explain_timeout() if explain_timeout is not None else ""
            raise LaunchError(
                f"guest did not print {marker} within {timeout_s:.0f} s"
                + (f": {why}" if why else ""),
                log=serial_log,
                hint="read the serial log; under TCG try --timeout-scale 2",
            )
        time.sleep(POLL_S)
