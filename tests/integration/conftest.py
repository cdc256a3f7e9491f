"""Fixtures for tests that boot real guests (TCG is fine) and run real tools."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@pytest.fixture(scope="session")
def spdk_vhost() -> Path:
    """SPDK's vhost target: VMLAB_SPDK, PATH or the prefix ../shared/tools/build-spdk fills."""
    from vmlab.spdk.find import find_spdk

    found = find_spdk()
    if found is None:
        pytest.skip(
            "SPDK is not built here: run ../shared/tools/build-spdk (.ci/run does), or set "
            "VMLAB_SPDK to an SPDK install prefix"
        )
    if os.geteuid() != 0:
        pytest.skip("SPDK's vhost needs root here (hugepages, a hugetlbfs mount)")
    return found.vhost


@dataclass(frozen=True)
class HostState:
    nr_hugepages: int
    hugetlbfs: tuple[str, ...]


def host_state() -> HostState:
    from vmlab.hugepages import SYSFS

    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    kinds = [line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()]
    return HostState(
        nr_hugepages=int((SYSFS / "nr_hugepages").read_text()),
        hugetlbfs=tuple(m for m, k in zip(mounts, kinds, strict=True) if k == "hugetlbfs"),
    )


def spdk_pids(binary: Path) -> list[int]:
    """Live (not zombie) processes running ``binary``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv0 == str(binary).encode() and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def spdk_processes() -> Callable[[Path], list[int]]:
    return spdk_pids


@pytest.fixture
def spdk_leaves_nothing(spdk_vhost: Path, lab_env: dict[str, str]) -> Iterator[None]:
    """After the test: no SPDK process, the hugepage pool and hugetlbfs mounts as before, and
    no socket or folder left in vmlab's runtime dir."""
    before = host_state()
    yield
    assert spdk_pids(spdk_vhost) == []
    assert host_state() == before
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []
