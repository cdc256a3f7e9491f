"""Shared pytest switches and fixtures, and SIGTERM as Ctrl-C for the whole session."""

from __future__ import annotations

import signal
from contextlib import ExitStack

import pytest

from vmlab.interrupt import sigterm_interrupts

_session_signals = ExitStack()


def pytest_sessionstart(session: pytest.Session) -> None:
    """A test run stopped with SIGTERM (CI's timeout, `kill`) runs the fixtures' finalizers
    as on Ctrl-C: pytest tears down on KeyboardInterrupt, so the SPDK tests' hugepage
    reservation, the Ceph cluster fixture and every guest are given back, not leaked.

    A suite started as a background job of a non-interactive shell (``cmd &`` in a script)
    inherits SIGINT ignored, and so would every vmlab it starts: the Ctrl-C tests would see
    SIGINT do nothing. Ctrl-C is restored for the session (children get the default)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _session_signals.enter_context(sigterm_interrupts())


def pytest_unconfigure(config: pytest.Config) -> None:
    _session_signals.close()  # after pytest_sessionfinish, which runs the last teardowns


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-golden",
        action="store_true",
        default=False,
        help="rewrite tests/data/golden/ from the current renderers",
    )


@pytest.fixture
def regenerate_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regenerate-golden"))
