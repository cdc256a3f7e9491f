"""The default image's cache: its key, finding a complete image, installing a build; and the
``vmlab.authkey=`` argument of its command line."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from vmlab import resources
from vmlab.errors import HostError
from vmlab.guest.image import (
    FORMAT_VERSION,
    DebRecord,
    GuestImage,
    authkey_cmdline,
    compute_key,
    find_image,
    key_material,
    render_init,
)
from vmlab.guest.image.cache import install

# --- authkey ---------------------------------------------------------------------------------


def _pub(key_type: str = "ssh-ed25519") -> str:
    blob = struct.pack(">I", len(key_type)) + key_type.encode() + struct.pack(">I", 32) + b"k" * 32
    return f"{key_type} {base64.b64encode(blob).decode()}"


def test_authkey_cmdline() -> None:
    line = _pub()
    blob = line.split()[1]
    assert authkey_cmdline(f"{line} me@laptop\n") == f"vmlab.authkey=ssh-ed25519:{blob}"
    assert authkey_cmdline(line) == f"vmlab.authkey=ssh-ed25519:{blob}"
    assert " " not in authkey_cmdline(line)


@pytest.mark.parametrize(
    "bad",
    ["", "ssh-ed25519", "ssh-ed25519 not*base64", "ssh-rsa " + _pub().split()[1],
     "ssh-ed25519 AAAA AAAA"],
)  # fmt: skip
def test_authkey_cmdline_rejects(bad: str) -> None:
    with pytest.raises(HostError):
        authkey_cmdline(bad)


# --- key -------------------------------------------------------------------------------------

RECORDS = [
    DebRecord("linux-image-6.1.0-9-cloud-amd64", "6.1.1-1", "pool/l/k.deb", "aa", 1, "kmod"),
    DebRecord("fio", "3.33-3", "pool/f/fio_3.33-3_amd64.deb", "bb", 1, "libc6 (>= 2.34), libaio1"),
]


def test_key_stable_and_sensitive() -> None:
    init = render_init()
    host = {"libc6": "2.36-9"}
    key = compute_key(key_material(RECORDS, init, host))
    assert key == compute_key(key_material(list(RECORDS), render_init(), dict(host)))
    assert len(key) == 16
    assert key != compute_key(key_material(RECORDS, init + "#\n", host))
    assert key != compute_key(key_material(RECORDS, init, {"libc6": "2.36-10"}))
    newer = [RECORDS[0], DebRecord("fio", "3.33-4", "pool/f/fio_3.33-4_amd64.deb", "cc", 1, "")]
    assert key != compute_key(key_material(newer, init, host))


def test_changed_template_changes_image_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = {"libc6": "2.36-9"}
    key = compute_key(key_material(RECORDS, render_init(), host))
    assert key == compute_key(key_material(RECORDS, render_init(), host))
    templates = tmp_path / "templates"
    shutil.copytree(resources.templates_dir() / "guest", templates / "guest")
    init = templates / "guest/init.sh.j2"
    init.write_text(
        init.read_text().replace(
            "echo {{ hostname }} > /etc/hostname", "echo other > /etc/hostname"
        )
    )
    monkeypatch.setattr(resources, "templates_dir", lambda: templates)
    assert compute_key(key_material(RECORDS, render_init(), host)) != key


# --- the cache -------------------------------------------------------------------------------


def _fake_image(images: Path, key: str, *, fmt: int = FORMAT_VERSION) -> Path:
    root = images / key
    root.mkdir(parents=True)
    (root / "vmlinux").write_bytes(b"k" * 10)
    (root / "initrd.img").write_bytes(b"i" * 20)
    (root / "initrd-slim.img").write_bytes(b"s" * 5)
    manifest = {
        "format": fmt, "key": key, "kernel": "vmlinux", "initrd": "initrd.img",
        "slim_initrd": "initrd-slim.img",
        "cmdline": "console=ttyS0", "ready_marker": "VMLAB-READY",
        "failed_marker": "VMLAB-INIT-FAILED", "host_key": "ssh-ed25519 AAAA", "user": "root",
        "kernel_version": "6.1.0-9-cloud-amd64", "fio_version": "fio-3.33",
        "min_memory_mib": 384,
        "sizes": {"kernel_bytes": 10, "initrd_bytes": 20, "slim_initrd_bytes": 5},
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_find_image(tmp_path: Path) -> None:
    images = tmp_path / "images"
    assert find_image(tmp_path) is None
    old = _fake_image(images, "aaaa")
    new = _fake_image(images, "bbbb")
    os.utime(old / "manifest.json", (1, 1))
    found = find_image(tmp_path)
    assert isinstance(found, GuestImage)
    assert found.root == new and found.kernel == new / "vmlinux" and found.min_memory_mib == 384
    (new / "initrd.img").write_bytes(b"short")  # incomplete → ignored
    assert find_image(tmp_path) == GuestImage(
        root=old, key="aaaa", kernel=old / "vmlinux", initrd=old / "initrd.img",
        slim_initrd=old / "initrd-slim.img", cmdline="console=ttyS0",
        ready_marker="VMLAB-READY", failed_marker="VMLAB-INIT-FAILED",
        host_key="ssh-ed25519 AAAA", user="root", kernel_version="6.1.0-9-cloud-amd64",
        fio_version="fio-3.33", min_memory_mib=384,
    )  # fmt: skip
    shutil.rmtree(old)
    _fake_image(images, "cccc", fmt=FORMAT_VERSION + 1)  # another builder's format
    _fake_image(images, ".build-dddd-x")  # a build in progress
    assert find_image(tmp_path) is None


def test_install_replaces_atomically(tmp_path: Path) -> None:
    final = tmp_path / "images" / "kkkk"
    _fake_image(tmp_path / "images", "kkkk")
    work = tmp_path / "images" / ".build-kkkk-1"
    work.mkdir()
    (work / "marker").write_text("new")
    install(work, final)
    assert (final / "marker").read_text() == "new"
    assert not work.exists()
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["kkkk"]  # old one removed
