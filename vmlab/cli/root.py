"""The root Typer app of the `vmlab` command: the -v option, ``version``, and the commands of
:data:`~vmlab.cli.COMMANDS` attached from their modules."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Annotated

import typer

from vmlab import __version__
from vmlab.cli import GROUPS, TOP_LEVEL, chosen_command
from vmlab.cli.app import new_app, out, setup_logging


def root_callback(
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
    ] = 0,
) -> None:
    setup_logging(verbose)


def build_app(argv: Sequence[str] | None = None) -> typer.Typer:
    """The root app. Given the arguments, only the command they run is attached (and its
    module imported); without them, or for help or an unknown command, every command is."""
    command = chosen_command(argv) if argv is not None else None
    app = new_app(
        "Benchmark virtualized storage on KVM/QEMU: a matrix of guests, fio inside, statistics out."
    )
    app.callback()(root_callback)

    @app.command()
    def version() -> None:
        """Print vmlab's version."""
        out.print(__version__)

    def wanted(name: str) -> bool:
        return command is None or command == name

    loaded: dict[str, typer.Typer] = {}
    for name, module in TOP_LEVEL.items():  # top-level commands
        if wanted(name) and module not in loaded:
            loaded[module] = importlib.import_module(f"vmlab.cli.{module}").app
            app.registered_commands += loaded[module].registered_commands
    for name, (module, help_text) in GROUPS.items():
        if wanted(name):
            group = importlib.import_module(f"vmlab.cli.{module}").app
            if help_text is None:  # the group's own help
                app.add_typer(group, name=name)
            else:
                app.add_typer(group, name=name, help=help_text)
    return app
