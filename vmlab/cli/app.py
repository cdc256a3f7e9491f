"""The `vmlab` command's two consoles, logging, errors and exit codes, and :func:`new_app` for
its Typer apps. The CLI modules are the only ones that print or exit.

Typer is imported by the command modules, not here: the quick commands (:mod:`vmlab.cli.quick`)
run without it."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from vmlab.errors import SpecError, UsageError, VmlabError
from vmlab.interrupt import sigterm_interrupts

if TYPE_CHECKING:
    import typer

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
    import typer  # loaded already by the command module that makes an app

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


def run_app(app: typer.Typer, argv: list[str] | None) -> None:
    """Typer reports usage errors; vmlab's own errors become one clear message and an exit
    code (1, or 2 for a bad spec or bad arguments).

    SIGTERM is Ctrl-C (:mod:`vmlab.interrupt`): everything started is stopped in order,
    finished cases are kept, and the exit status is 130 either way (``EXIT_INTERRUPTED``, what
    ``bench`` and ``fleet run`` return, and Typer for every other command), not 143: the run
    was interrupted and cleaned up, not killed."""
    _run(lambda: app(args=argv))


def run_command(command: Callable[[], None]) -> None:
    """Run a command function outside Typer (:mod:`vmlab.cli.quick`) and exit as Typer's
    standalone mode does: 0, 130 on Ctrl-C, 1 on a closed pipe (``vmlab results list |
    head``); vmlab's errors as in :func:`run_app`."""

    def standalone() -> None:
        try:
            command()
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            # Python's advice for SIGPIPE: the rest of the output, and the flush at exit,
            # go nowhere instead of raising again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_ERROR)
        sys.exit(0)

    _run(standalone)


def _run(command: Callable[[], None]) -> None:
    try:
        with sigterm_interrupts():
            command()
    except VmlabError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        if exc.hint:
            err.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        sys.exit(EXIT_USAGE if isinstance(exc, SpecError | UsageError) else EXIT_ERROR)
