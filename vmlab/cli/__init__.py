"""The `vmlab` command, one module per command group:

- :mod:`~vmlab.cli.bench` (``bench``), :mod:`~vmlab.cli.render` (``render``);
- :mod:`~vmlab.cli.report` (``import``, ``compare``, ``report``);
- :mod:`~vmlab.cli.results`, :mod:`~vmlab.cli.host`, :mod:`~vmlab.cli.image`,
  :mod:`~vmlab.cli.ceph`, :mod:`~vmlab.cli.fleet` (their groups);
- :mod:`~vmlab.cli.tables` (the results tables), :mod:`~vmlab.cli.runlist` (the run list),
  :mod:`~vmlab.cli.root` (the root Typer app), :mod:`~vmlab.cli.app` (consoles, logging,
  errors and exit codes).

These modules are the only ones that print or exit. Start-up is most of what a quick command
costs (``vmlab results list``): the console script loads only the module of the command it
runs (:data:`COMMANDS`), and heavy imports happen inside the commands. The plain forms of
``results list`` and ``compare`` are read without Typer (:mod:`~vmlab.cli.quick`); this module
and :mod:`~vmlab.cli.app` do not import it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vmlab.cli.app import run_app, run_command
from vmlab.cli.quick import quick_command

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


def main(argv: list[str] | None = None) -> None:
    """The console script: vmlab's own errors become one clear message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    quick = quick_command(args)
    if quick is not None:
        run_command(quick.run)
    else:
        from vmlab.cli.root import build_app  # Typer and the chosen command's module

        run_app(build_app(args), argv)
