"""Files shipped with vmlab: Jinja templates and Ansible playbooks.

In a wheel they live inside the package (``vmlab/templates``); in a source checkout they are the
top-level ``templates/`` and ``playbooks/`` folders beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(name: str) -> Path:
    packaged = Path(str(resources.files("vmlab"))) / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"vmlab is installed without its {name}/ folder (looked in {packaged})")


def templates_dir() -> Path:
    return _shipped("templates")


def playbooks_dir() -> Path:
    return _shipped("playbooks")
