"""The `vmlab` command, one module per command group:

- :mod:`~vmlab.cli.bench` (``bench``), :mod:`~vmlab.cli.render` (``render``);
- :mod:`~vmlab.cli.report` (``import``, ``compare``, ``report``);
- :mod:`~vmlab.cli.results`, :mod:`~vmlab.cli.host`, :mod:`~vmlab.cli.image`,
  :mod:`~vmlab.cli.ceph`, :mod:`~vmlab.cli.fleet` (their groups);
- :mod:`~vmlab.cli.tables` (the results tables), :mod:`~vmlab.cli.app` (the root app,
  consoles, errors and exit codes).

These modules are the only ones that print or exit. Start-up is most of what a quick command
costs (``vmlab results list``): the console script loads only the module of the command it
runs (:data:`COMMANDS`), and heavy imports happen inside the commands.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from vmlab import __version__
from vmlab.cli.app import new_app, out, root_callback, run_app

TOP_LEVEL = {
    "bench": "bench",
    "render": "render",
    "import": "report",
    "compare": "report",
    "report": "report",
}
"""Top-level command -> the vmlab.cli module whose ``app`` holds it."""

GROUPS = {
    "image": ("image", None),
    "host": ("host", None),
    "results": ("results", "Stored runs: list, show, rm, reindex."),
    "ceph": ("ceph", "A micro Ceph cluster for labs and tests."),
    "fleet": ("fleet", "Run a spec on every host of an Ansible inventory."),
}
"""Command group -> its vmlab.cli module and help."""

COMMANDS = frozenset({"version", *TOP_LEVEL, *GROUPS})


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (its first word that is not an option), if vmlab has it."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


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


def main(argv: list[str] | None = None) -> None:
    """The console script: vmlab's own errors become one clear message and an exit code."""
    run_app(build_app(sys.argv[1:] if argv is None else argv), argv)
