"""Files shipped with vmlab: Jinja templates and Ansible playbooks.

In a wheel they live inside the package (``vmlab/templates``); in a source checkout they are the
top-level ``templates/`` and ``playbooks/`` folders beside the package. A missing one is a
HostError (the installation is incomplete), never a bare FileNotFoundError.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vmlab.errors import HostError

REINSTALL_HINT = (
    "this vmlab installation is incomplete: reinstall it (pip install --force-reinstall vmlab) "
    "or run it from a source checkout, whose templates/ and playbooks/ it reads"
)


def _shipped(name: str) -> Path:
    packaged = Path(str(resources.files("vmlab"))) / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise HostError(
        f"vmlab is installed without its {name}/ folder (looked in {packaged} and {checkout})",
        hint=REINSTALL_HINT,
    )


def templates_dir() -> Path:
    return _shipped("templates")


def playbooks_dir() -> Path:
    return _shipped("playbooks")


def template_file(relative: str) -> Path:
    """A file under templates/ read as it is (e.g. ``guest/facts.sh``); HostError if missing."""
    path = templates_dir() / relative
    if not path.is_file():
        raise HostError(
            f"vmlab is installed without its template {relative} ({path})", hint=REINSTALL_HINT
        )
    return path
