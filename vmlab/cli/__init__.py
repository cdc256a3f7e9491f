"""The `vmlab` command, one module per command group:

- :mod:`~vmlab.cli.bench` (``bench``), :mod:`~vmlab.cli.render` (``render``);
- :mod:`~vmlab.cli.report` (``import``, ``compare``, ``report``);
- :mod:`~vmlab.cli.results`, :mod:`~vmlab.cli.host`, :mod:`~vmlab.cli.image`,
  :mod:`~vmlab.cli.ceph`, :mod:`~vmlab.cli.fleet` (their groups);
- :mod:`~vmlab.cli.tables` (the results tables), :mod:`~vmlab.cli.app` (the root app,
  consoles, errors and exit codes).

These modules are the only ones that print or exit. Heavy imports happen inside the commands,
so `vmlab --help` stays quick.
"""

from __future__ import annotations

import typer

from vmlab import __version__
from vmlab.cli.app import new_app, out, root_callback, run_app


def build_app() -> typer.Typer:
    from vmlab.cli import bench, ceph, fleet, host, image, render, report, results

    app = new_app(
        "Benchmark virtualized storage on KVM/QEMU: a matrix of guests, fio inside, statistics out."
    )
    app.callback()(root_callback)

    @app.command()
    def version() -> None:
        """Print vmlab's version."""
        out.print(__version__)

    for commands in (bench.app, render.app, report.app):  # top-level commands
        app.registered_commands += commands.registered_commands
    app.add_typer(image.app, name="image")
    app.add_typer(host.app, name="host")
    app.add_typer(results.app, name="results", help="Stored runs: list, show, rm, reindex.")
    app.add_typer(ceph.app, name="ceph", help="A micro Ceph cluster for labs and tests.")
    app.add_typer(fleet.app, name="fleet", help="Run a spec on every host of an Ansible inventory.")
    return app


def main(argv: list[str] | None = None) -> None:
    """The console script: vmlab's own errors become one clear message and an exit code."""
    run_app(build_app(), argv)
