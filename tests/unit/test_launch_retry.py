"""The SSH-port retry of both launchers retries the start only, never the caller's work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vmlab.errors import LaunchError
from vmlab.launch.direct import retry_port


def test_a_taken_port_at_start_is_retried_with_the_next_suffix(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("could not set up host forwarding rule 'tcp:127.0.0.1:40022-:22'\n")
    starts: list[str] = []

    @contextmanager
    def once(suffix: str) -> Iterator[str]:
        starts.append(suffix)
        if len(starts) == 1:
            raise LaunchError("QEMU exited", log=log)
        yield f"guest{suffix}"

    with retry_port(once) as guest:
        assert guest == "guest.2"
    assert starts == ["", ".2"]


def test_an_error_in_the_callers_body_is_not_a_reason_to_relaunch(tmp_path: Path) -> None:
    """Before: the retry loop wrapped the yield, so a LaunchError raised by the caller while it
    used the guest (one whose log mentions hostfwd) booted a second guest and broke the
    context manager ("generator didn't stop after throw()")."""
    log = tmp_path / "qemu.log"
    log.write_text("hostfwd tcp:127.0.0.1:40022-:22\n")
    starts: list[str] = []
    stopped: list[str] = []

    @contextmanager
    def once(suffix: str) -> Iterator[str]:
        starts.append(suffix)
        try:
            yield "guest"
        finally:
            stopped.append(suffix)

    with pytest.raises(LaunchError, match="from the body"), retry_port(once):
        raise LaunchError("from the body", log=log)
    assert starts == [""] and stopped == [""]


def test_other_start_errors_are_not_retried(tmp_path: Path) -> None:
    @contextmanager
    def once(suffix: str) -> Iterator[str]:
        raise LaunchError("no kernel")
        yield "never"

    with pytest.raises(LaunchError, match="no kernel"), retry_port(once):
        pass
