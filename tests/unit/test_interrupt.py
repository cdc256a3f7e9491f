"""SIGTERM is Ctrl-C: inside sigterm_interrupts (the CLI, the test session) it raises
KeyboardInterrupt, so the cleanup that Ctrl-C runs runs; the old handler is back after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer

from vmlab.cli.app import EXIT_INTERRUPTED, new_app, run_app
from vmlab.interrupt import sigterm_interrupts


def sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler runs here, at the latest


def test_sigterm_raises_keyboard_interrupt_inside_and_the_old_handler_is_back_after() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_interrupts():
        assert signal.getsignal(signal.SIGTERM) is not before
        with pytest.raises(KeyboardInterrupt):
            sigterm_self()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_does_not_cut_the_cleanup_short() -> None:
    cleaned = False
    with sigterm_interrupts(), pytest.raises(KeyboardInterrupt):
        try:
            sigterm_self()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # again, while "stopping what was started"
            time.sleep(0.1)
            cleaned = True
    assert cleaned


def test_outside_the_main_thread_it_changes_nothing() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def worker() -> None:
        with sigterm_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


def test_a_sigterm_from_another_process_runs_the_finally_blocks(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    script = (
        "import sys, time\n"
        "from vmlab.interrupt import sigterm_interrupts\n"
        "with sigterm_interrupts():\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n"
        "        sys.exit(130)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').write('yes')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.read_text() == "yes"


def test_the_cli_turns_sigterm_into_its_interrupted_exit() -> None:
    app = new_app()
    seen: list[object] = []

    @app.command()
    def block() -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        sigterm_self()

    @app.command()
    def other() -> None:  # two commands: `block` is a subcommand, as vmlab's are
        raise typer.Exit(0)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        run_app(app, ["block"])
    assert exited.value.code == EXIT_INTERRUPTED == 130
    assert seen and seen[0] is not before  # installed while the command ran...
    assert signal.getsignal(signal.SIGTERM) is before  # ...and restored after


def test_this_test_session_turns_sigterm_into_keyboard_interrupt() -> None:
    # tests/conftest.py: a SIGTERM'd pytest runs the fixtures' finalizers (hugepages, Ceph)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler) and handler.__module__ == "vmlab.interrupt"
