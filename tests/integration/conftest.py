"""Fixtures for tests that boot real guests (TCG is fine) and run real tools."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmlab.guest.image import GuestImage, build_image


def need(binary: str, package: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is missing: apt-get install {package} (scripts/setup --dev)")


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The default guest image, built once (cached under VMLAB_CACHE or ~/.cache/vmlab)."""
    need("qemu-system-x86_64", "qemu-system-x86")
    return build_image()


@pytest.fixture
def lab_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Private runtime, scratch and state dirs, so a test can check nothing is left behind."""
    dirs = {name: tmp_path / name for name in ("runtime", "scratch", "state", "results")}
    for d in dirs.values():
        d.mkdir()
    env = {
        "VMLAB_RUNTIME": str(dirs["runtime"]),
        "VMLAB_SCRATCH": str(dirs["scratch"]),
        "VMLAB_STATE": str(dirs["state"]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ, **env, "RESULTS": str(dirs["results"])}


@pytest.fixture
def qemu_pids() -> Callable[[str], list[int]]:
    return qemu_pids_mentioning


def qemu_pids_mentioning(text: str) -> list[int]:
    """QEMU or qemu-storage-daemon processes (not zombies) whose argv contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        is_qemu = b"qemu-system" in cmdline or b"qemu-storage-daemon" in cmdline
        if is_qemu and text.encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
