"""Unit tests of vmlab.proc: the one command runner and the pid helpers, on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmlab.errors import CommandError, HostError
from vmlab.proc import alive, pids_with_arg, proc_state, run, signal_and_wait, stop_pid


def test_run_captures_output_and_names_a_failing_command() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2"], timeout_s=10)
    assert (done.out, done.err, done.ok) == ("out\n", "err\n", True)
    with pytest.raises(CommandError, match="sh failed") as err:
        run(["sh", "-c", "echo why >&2; exit 3"], timeout_s=10, hint="do this")
    assert err.value.returncode == 3
    assert "why" in err.value.output
    assert err.value.hint == "do this"
    assert not run(["false"], timeout_s=10, check=False).ok


def test_run_says_how_to_get_a_missing_program() -> None:
    with pytest.raises(HostError, match="is not installed") as err:
        run(["vmlab-no-such-program"], timeout_s=10, missing_hint="apt-get install it")
    assert err.value.hint == "apt-get install it"


def test_run_timeout_has_its_own_hint() -> None:
    with pytest.raises(CommandError, match=r"nap did not finish within 0\.2 s") as err:
        run(["sleep", "5"], timeout_s=0.2, what="nap", hint="h", timeout_hint="is it up?")
    assert err.value.returncode is None
    assert err.value.hint == "is it up?"
    with pytest.raises(CommandError) as err:
        run(["sleep", "5"], timeout_s=0.2, hint="h")
    assert err.value.hint == "h"


def test_run_into_a_file_returns_when_a_daemonizing_program_does(tmp_path: Path) -> None:
    """A pipe would stay open as long as the background child: the run would time out."""
    out = tmp_path / "out.log"
    out.write_text("earlier\n")
    done = run(["sh", "-c", "sleep 30 & echo $!; echo err >&2"], timeout_s=5, output=out)
    assert done.ok
    assert (done.stdout, done.stderr) == (b"", b"")
    lines = out.read_text().splitlines()
    assert lines[0] == "earlier"  # appended
    assert "err" in lines
    daemon = int(lines[1])
    assert stop_pid(daemon, grace_s=5)
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "exit 4"], timeout_s=5, output=out)
    assert err.value.log == out


def test_a_zombie_is_dead_and_a_running_process_is_alive() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd sleep
        while not alive(proc.pid, arg="30") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alive(proc.pid, arg="30")
        assert alive(proc.pid)
        assert not alive(proc.pid, arg="31")  # another command line: pid reuse
        assert proc.pid in pids_with_arg("30")
        proc.kill()
        deadline = time.monotonic() + 10
        while proc_state(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_state(proc.pid) == "Z"  # not reaped yet, like under a PID 1 that never reaps
        assert not alive(proc.pid)
        assert not alive(proc.pid, arg="30")
        assert proc.pid not in pids_with_arg("30")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc_state(proc.pid) is None


def test_stop_pid_kills_what_ignores_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # SIGTERM is ignored from here on
        assert stop_pid(proc.pid, grace_s=0.3, what="stubborn")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert "stubborn" in caplog.text
        assert "ignored SIGTERM" in caplog.text
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_signal_and_wait_spares_a_process_without_the_argument() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while not alive(proc.pid, arg="30") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signal_and_wait(proc.pid, signal.SIGKILL, 1.0, arg="/not/ours.conf")
        assert proc.poll() is None  # not signalled: the pid is someone else's
        assert signal_and_wait(proc.pid, signal.SIGKILL, 10.0, arg="30")
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(timeout=10)
