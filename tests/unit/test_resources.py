"""Shipped templates and playbooks: found in a checkout, and a clear HostError when missing."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import pytest

from vmlab import resources
from vmlab.errors import HostError


def test_shipped_folders_and_files_are_found() -> None:
    assert (resources.templates_dir() / "qemu").is_dir()
    assert (resources.playbooks_dir() / "bench.yml").is_file()
    assert resources.template_file("guest/facts.sh").is_file()


@pytest.fixture
def bare_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """vmlab as a wheel built without templates/ and playbooks/, outside any checkout."""
    package = tmp_path / "site-packages" / "vmlab"
    package.mkdir(parents=True)
    monkeypatch.setattr(importlib.resources, "files", lambda _name: package)
    monkeypatch.setattr(resources, "__file__", str(package / "resources.py"))
    return package


@pytest.mark.parametrize(
    ("get", "name"),
    [(resources.templates_dir, "templates"), (resources.playbooks_dir, "playbooks")],
)
def test_a_missing_shipped_folder_is_a_host_error(
    bare_install: Path, get: Callable[[], Path], name: str
) -> None:
    with pytest.raises(HostError) as info:
        get()
    assert f"without its {name}/ folder" in str(info.value)
    assert str(bare_install / name) in str(info.value)
    assert info.value.hint and "reinstall" in info.value.hint


def test_a_missing_shipped_file_is_a_host_error() -> None:
    with pytest.raises(HostError, match=r"guest/no-such\.sh") as info:
        resources.template_file("guest/no-such.sh")
    assert info.value.hint
