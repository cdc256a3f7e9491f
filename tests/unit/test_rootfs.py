"""The rootfs recipe: variants, packages, scripts, cache key, boot disk (no build here: that
needs root and mmdebstrap; tests/integration/test_cloud_guest.py builds and boots them)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.guest import rootfs
from vmlab.guest.image import FAILED_MARKER, GuestImage, compute_key
from vmlab.guest.rootfs import build
from vmlab.guest.rootfs.tree import mounts_under


def test_rootfs_variants_and_packages() -> None:
    assert rootfs.variant_name(systemd=False, cloud_init=False) == "minimal"
    assert rootfs.variant_name(systemd=True, cloud_init=False) == "systemd"
    assert rootfs.variant_name(systemd=True, cloud_init=True) == "cloud"
    with pytest.raises(HostError, match="needs systemd"):
        rootfs.variant_name(systemd=False, cloud_init=True)
    minimal = rootfs.rootfs_packages("minimal")
    assert {"openssh-server", "fio", "iproute2", "busybox"} <= set(minimal)
    assert "systemd-sysv" not in minimal
    assert "cloud-init" not in rootfs.rootfs_packages("systemd")
    assert {"systemd-sysv", "udev", "cloud-init"} <= set(rootfs.rootfs_packages("cloud"))


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("render", [rootfs.render_initrd_init, rootfs.render_rootfs_init])
def test_rootfs_scripts_render_and_parse(render: object, tmp_path: Path) -> None:
    assert callable(render)
    text = render()
    assert isinstance(text, str) and text.startswith("#!/bin/sh\n")
    assert "{{" not in text and "{%" not in text
    script = tmp_path / "init"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)  # syntax only


def test_rootfs_initrd_defaults() -> None:
    text = rootfs.render_initrd_init()
    assert f'root="LABEL={rootfs.ROOT_LABEL}"' in text
    assert "switch_root /newroot" in text
    assert FAILED_MARKER in text


def fake_image(root: Path, key: str, kernel_sha: str = "aa") -> GuestImage:
    root.mkdir(parents=True, exist_ok=True)
    packages = [
        {"package": "linux-image-6.1.0-56-cloud-amd64", "version": "6.1.192-2",
         "deb": "linux.deb", "sha256": kernel_sha},
        {"package": "busybox-static", "version": "1:1.35.0-4", "deb": "bb.deb", "sha256": "bb"},
        {"package": "fio", "version": "3.33-3", "deb": "fio.deb", "sha256": "cc"},
    ]  # fmt: skip
    (root / "manifest.json").write_text(json.dumps({"packages": packages}))
    return GuestImage(
        root=root, key=key, kernel=root / "vmlinux", initrd=root / "i", slim_initrd=root / "s",
        cmdline="", ready_marker="R", failed_marker="F", host_key="", user="root",
        kernel_version="6.1", fio_version="fio-3.33", min_memory_mib=384,
    )  # fmt: skip


def test_rootfs_key_changes_with_what_goes_in(tmp_path: Path) -> None:
    image = fake_image(tmp_path / "a", "feedface")
    versions = {"fio": "3.33-3"}

    def key(img: GuestImage, variant: str, vers: dict[str, str], sources: str) -> str:
        return compute_key(rootfs.key_material(img, variant, vers, sources))

    base = key(image, "cloud", versions, "deb x")
    # Another default image (its init changed) with the same kernel and busybox: same rootfs.
    assert base == key(fake_image(tmp_path / "b", "beefcafe"), "cloud", versions, "deb x")
    others = {
        key(image, "minimal", versions, "deb x"),
        key(image, "cloud", {"fio": "3.34"}, "deb x"),
        key(image, "cloud", versions, "deb y"),
        key(fake_image(tmp_path / "c", "feedface", kernel_sha="dd"), "cloud", versions, "deb x"),
    }
    assert base not in others and len(others) == 4
    assert rootfs.source_packages(image)["linux-image"]["version"] == "6.1.192-2"


def test_root_disk_args() -> None:
    args = rootfs.root_disk_args(Path("/r/a,b.qcow2"))
    assert args[1] == "driver=file,node-name=root-file,filename=/r/a,,b.qcow2"
    assert args[3] == "driver=qcow2,node-name=root,file=root-file"
    assert args[5] == "virtio-blk-pci,id=dev-root,drive=root,serial=vmlab-root"
    assert rootfs.root_disk_args(Path("/r.raw"), fmt="raw", bootindex=0)[5].endswith(",bootindex=0")


def test_incomplete_rootfs_image_is_not_loaded(tmp_path: Path) -> None:
    broken = tmp_path / "rootfs" / "0123456789abcdef"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text('{"format": 1, "key": "0123456789abcdef"}')
    assert build._load(broken) is None


def test_mounts_under_reads_mountinfo(tmp_path: Path) -> None:
    assert mounts_under(tmp_path) == []  # nothing is mounted in a fresh temp dir
    everything = mounts_under(Path("/"))
    assert everything[-1] == Path("/")  # deepest first, the root last
    assert all(len(a.parts) >= len(b.parts) for a, b in itertools.pairwise(everything))
