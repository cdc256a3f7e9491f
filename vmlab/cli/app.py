"""The root of the `vmlab` command: its Typer app, the two consoles, logging, errors and exit
codes. The CLI modules are the only ones that print or exit."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from vmlab.errors import SpecError, UsageError, VmlabError
from vmlab.interrupt import sigterm_interrupts

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_ERROR = 1  # a vmlab error: the message says what and how to fix it
EXIT_USAGE = 2  # a bad spec or bad arguments
EXIT_INTERRUPTED = 130

INTERRUPTED = (
    "interrupted: everything vmlab started has been stopped; finished cases are kept "
    "(resume with `vmlab bench --resume results/<run-id>`)"
)


def new_app(help_text: str | None = None) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # qemu.qmp logs an ERROR for every connection to a QEMU that died (the accelerator probe's
    # KVM attempt on a host where KVM cannot run guests): vmlab catches and reports those itself,
    # so the library's own account is shown only when asked for with -v.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL if verbose == 0 else level)
    logging.getLogger("paramiko").setLevel(max(level, logging.WARNING))


def root_callback(
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
    ] = 0,
) -> None:
    setup_logging(verbose)


def run_app(app: typer.Typer, argv: list[str] | None) -> None:
    """Typer reports usage errors; vmlab's own errors become one clear message and an exit
    code (1, or 2 for a bad spec or bad arguments).

    SIGTERM is Ctrl-C (:mod:`vmlab.interrupt`): everything started is stopped in order,
    finished cases are kept, and the exit status is 130 either way (``EXIT_INTERRUPTED``, what
    ``bench`` and ``fleet run`` return, and Typer for every other command), not 143: the run
    was interrupted and cleaned up, not killed."""
    try:
        with sigterm_interrupts():
            app(args=argv)
    except VmlabError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        if exc.hint:
            err.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        sys.exit(EXIT_USAGE if isinstance(exc, SpecError | UsageError) else EXIT_ERROR)
