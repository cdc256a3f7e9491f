"""The CLI's logging set-up: library noise about failures vmlab reports itself stays quiet."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from vmlab.cli.app import setup_logging


@pytest.fixture(autouse=True)
def _restore_levels() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("qemu.qmp", "paramiko")]
    saved = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, saved, strict=True):
        lg.setLevel(level)


def test_qmp_negotiation_errors_are_hidden_unless_verbose() -> None:
    # A probe QEMU that dies under KVM makes qemu.qmp log "Negotiation failed: EOFError" at
    # ERROR; vmlab already turns that death into its verdict, so a user must not see it.
    setup_logging(0)
    assert not logging.getLogger("qemu.qmp").isEnabledFor(logging.ERROR)
    assert logging.getLogger("paramiko").isEnabledFor(logging.WARNING)


def test_verbose_shows_the_qmp_library_again() -> None:
    setup_logging(2)
    assert logging.getLogger("qemu.qmp").isEnabledFor(logging.DEBUG)
