from __future__ import annotations

import base64
import gzip
import json
import lzma
import os
import shutil
import struct
from pathlib import Path

import lz4.block  # type: ignore[import-untyped]
import pytest

from vmlab import proc, resources
from vmlab.errors import HostError
from vmlab.guest import image
from vmlab.guest.image import (
    DebRecord,
    GuestImage,
    authkey_cmdline,
    compute_key,
    extract_vmlinux,
    find_image,
    key_material,
    module_name,
    pvh_entry,
    read_modinfo,
    resolve_modules,
)

# --- tiny ELF64 writers ----------------------------------------------------------------------


def _elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A relocatable ELF64 with the given sections (plus null and .shstrtab)."""
    names = [*sections, ".shstrtab"]
    shstrtab = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    name_off = {n: shstrtab.index(b"\0" + n.encode() + b"\0") + 1 for n in names}
    body = b""
    placed = []
    for name, data in [*sections.items(), (".shstrtab", shstrtab)]:
        placed.append((name, 64 + len(body), len(data)))
        body += data
    shoff = 64 + len(body)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                          len(placed) + 1, len(placed))  # fmt: skip
    shdrs = b"\0" * 64
    for name, offset, size in placed:
        sh_type = 3 if name == ".shstrtab" else 1
        shdrs += struct.pack("<IIQQQQIIQQ", name_off[name], sh_type, 0, 0, offset, size,
                             0, 0, 1, 0)  # fmt: skip
    return header + body + shdrs


def _module(moddir: Path, rel: str, *, depends: str = "", softdep: str = "",
            compress: str = "") -> None:  # fmt: skip
    info = [f"name={module_name(rel)}", f"depends={depends}", "license=GPL"]
    if softdep:
        info.append(f"softdep={softdep}")
    elf = _elf_with_sections({".text": b"\x90" * 8, ".modinfo": b"\0".join(
        s.encode() for s in info) + b"\0"})  # fmt: skip
    path = moddir / (rel + compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == ".xz":
        elf = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif compress == ".gz":
        elf = gzip.compress(elf)
    path.write_bytes(elf)


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    d = tmp_path / "lib/modules/6.1.0-test"
    _module(d, "kernel/drivers/virtio/virtio.ko")
    _module(d, "kernel/drivers/virtio/virtio_ring.ko")
    _module(d, "kernel/drivers/virtio/virtio_pci_modern_dev.ko", compress=".xz")
    _module(d, "kernel/drivers/virtio/virtio_pci.ko",
            depends="virtio_ring,virtio_pci_modern_dev,virtio")  # fmt: skip
    _module(d, "kernel/drivers/scsi/scsi_common.ko", compress=".gz")
    _module(d, "kernel/drivers/scsi/scsi_mod.ko", depends="scsi_common")
    _module(d, "kernel/drivers/scsi/sd_mod.ko", depends="scsi_mod,crc-t10dif",
            softdep="pre: crc32c_generic absent_module")  # fmt: skip
    _module(d, "kernel/drivers/scsi/virtio_scsi.ko", depends="scsi_mod,virtio_ring,virtio")
    _module(d, "kernel/crypto/crc32c_generic.ko")
    (d / "modules.builtin").write_text(
        "kernel/lib/crc-t10dif.ko\nkernel/drivers/nvme/host/nvme.ko\n"
    )
    return d


def test_read_modinfo_plain_and_compressed(moddir: Path) -> None:
    info = read_modinfo(moddir / "kernel/drivers/virtio/virtio_pci.ko")
    assert info["depends"] == ["virtio_ring,virtio_pci_modern_dev,virtio"]
    assert info["license"] == ["GPL"]
    assert read_modinfo(moddir / "kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz")["name"] == [
        "virtio_pci_modern_dev"
    ]
    assert read_modinfo(moddir / "kernel/drivers/scsi/scsi_common.ko.gz")["depends"] == [""]


def test_read_modinfo_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ko"
    bad.write_bytes(b"not an elf")
    with pytest.raises(HostError, match="cannot read kernel module"):
        read_modinfo(bad)


def test_modules_in_depends_order(moddir: Path) -> None:
    plan = resolve_modules(moddir, ["virtio_pci", "virtio_scsi", "sd_mod", "nvme"])
    names = [module_name(p) for p in plan.load_order]
    for module, deps in {
        "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio"],
        "scsi_mod": ["scsi_common"],
        "virtio_scsi": ["scsi_mod", "virtio_ring", "virtio"],
        "sd_mod": ["scsi_mod", "crc32c_generic"],
    }.items():
        for dep in deps:
            assert names.index(dep) < names.index(module), (dep, module, names)
    assert len(names) == len(set(names))  # each once
    assert "nvme" not in names and "crc_t10dif" not in names  # built in
    assert set(plan.builtin) == {"nvme", "crc_t10dif"}
    assert "kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz" in plan.load_order


def test_missing_module_is_a_host_error(moddir: Path) -> None:
    _module(moddir, "kernel/drivers/x/needs_ghost.ko", depends="ghost")
    with pytest.raises(HostError, match=r"ghost .*needs_ghost"):
        resolve_modules(moddir, ["needs_ghost"])
    with pytest.raises(HostError, match="no_such_module"):
        resolve_modules(moddir, ["no_such_module"])


def test_module_name_normalises() -> None:
    assert module_name("kernel/lib/crc-t10dif.ko.xz") == "crc_t10dif"
    assert module_name(Path("a/virtio_net.ko")) == "virtio_net"


# --- kernel ----------------------------------------------------------------------------------


def _elf_with_note(entry: int | None) -> bytes:
    notes = b""
    for name, ntype, desc in [(b"Xen\0", 6, b"linux\0\0\0"), (b"Linux\0", 1, b"6.1\0")] + (
        [(b"Xen\0", 18, struct.pack("<I", entry))] if entry is not None else []
    ):
        notes += struct.pack("<III", len(name), len(desc), ntype)
        notes += name + b"\0" * (-len(name) % 4) + desc + b"\0" * (-len(desc) % 4)
    phoff, note_off = 64, 64 + 56
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    return header + phdr + notes + b"\xcc" * 4000


def _bzimage(payload_plain: bytes, compress: str) -> bytes:
    if compress == "xz":
        packed = lzma.compress(payload_plain, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif compress == "lz4":  # the kernel's legacy LZ4: magic, then (size, block) pairs
        block = lz4.block.compress(payload_plain, store_size=False)
        packed = b"\x02\x21\x4c\x18" + struct.pack("<I", len(block)) + block
    else:
        packed = gzip.compress(payload_plain)
    payload = packed + struct.pack("<I", len(payload_plain))
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    pm_code = b"\x90" * 300  # the decompressor stub, before the payload
    struct.pack_into("<II", setup, 0x248, len(pm_code), len(payload))
    return bytes(setup) + pm_code + payload + b"\0" * 64


@pytest.mark.parametrize("compress", ["xz", "gzip", "lz4"])
def test_extract_vmlinux_and_pvh(compress: str) -> None:
    elf = _elf_with_note(0x1000850)
    assert extract_vmlinux(_bzimage(elf, compress)) == elf
    assert pvh_entry(elf) == 0x1000850
    assert pvh_entry(_elf_with_note(None)) is None


def test_extract_vmlinux_checks_the_size() -> None:
    bz = bytearray(_bzimage(_elf_with_note(1), "xz"))
    start = 4 * 512
    offset, length = struct.unpack_from("<II", bz, 0x248)
    struct.pack_into("<I", bz, start + offset + length - 4, 12345)  # wrong uncompressed size
    assert extract_vmlinux(bytes(bz)) is None
    assert extract_vmlinux(b"\0" * 4096) is None


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
    init = image.render_init()
    host = {"libc6": "2.36-9"}
    key = compute_key(key_material(RECORDS, init, host))
    assert key == compute_key(key_material(list(RECORDS), image.render_init(), dict(host)))
    assert len(key) == 16
    assert key != compute_key(key_material(RECORDS, init + "#\n", host))
    assert key != compute_key(key_material(RECORDS, init, {"libc6": "2.36-10"}))
    newer = [RECORDS[0], DebRecord("fio", "3.33-4", "pool/f/fio_3.33-4_amd64.deb", "cc", 1, "")]
    assert key != compute_key(key_material(newer, init, host))


def test_changed_template_changes_image_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = {"libc6": "2.36-9"}
    key = compute_key(key_material(RECORDS, image.render_init(), host))
    assert key == compute_key(key_material(RECORDS, image.render_init(), host))
    templates = tmp_path / "templates"
    shutil.copytree(resources.templates_dir() / "guest", templates / "guest")
    init = templates / "guest/init.sh.j2"
    init.write_text(init.read_text().replace("hostname {{ hostname }}", "hostname other"))
    monkeypatch.setattr(resources, "templates_dir", lambda: templates)
    assert compute_key(key_material(RECORDS, image.render_init(), host)) != key


def test_rendered_init_has_markers_and_no_placeholders() -> None:
    text = image.render_init()
    assert text.startswith("#!/bin/sh\n")
    assert "{{" not in text and "{%" not in text
    assert 'echo "VMLAB-READY" > /dev/ttyS0' in text
    assert "VMLAB-INIT-FAILED: $*" in text
    assert "10.0.2.15/24" in text and "vmlab.authkey=" in text


def test_depends_names() -> None:
    rec = DebRecord("x", "1", "p/x.deb", "", 0, "libc6 (>= 2.34), libfoo1 | libbar1, python3:any")
    assert rec.depends_names() == ["libc6", "libfoo1", "python3"]


def test_parse_apt_records() -> None:
    text = "Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2\n"
    assert image._parse_records(text) == [
        {"Package": "a", "Version": "1", "Description": "x\nmore"},
        {"Package": "b", "Version": "2"},
    ]


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd missing: apt-get install libc-bin")
def test_ldd_closure_maps_host_libraries_into_usr(tmp_path: Path) -> None:
    libs = image.ldd_closure(Path("/bin/true"), tmp_path)
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in libs
    assert all(guest.startswith("/usr/") for guest in libs)
    assert all(src.is_file() and not src.is_symlink() for src in libs.values())


# --- the cache -------------------------------------------------------------------------------


def _fake_image(images: Path, key: str, *, fmt: int = image.FORMAT_VERSION) -> Path:
    root = images / key
    root.mkdir(parents=True)
    (root / "vmlinux").write_bytes(b"k" * 10)
    (root / "initrd.img").write_bytes(b"i" * 20)
    manifest = {
        "format": fmt, "key": key, "kernel": "vmlinux", "initrd": "initrd.img",
        "cmdline": "console=ttyS0", "ready_marker": "VMLAB-READY",
        "failed_marker": "VMLAB-INIT-FAILED", "host_key": "ssh-ed25519 AAAA", "user": "root",
        "kernel_version": "6.1.0-9-cloud-amd64", "fio_version": "fio-3.33",
        "min_memory_mib": 384, "sizes": {"kernel_bytes": 10, "initrd_bytes": 20},
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
        cmdline="console=ttyS0", ready_marker="VMLAB-READY", failed_marker="VMLAB-INIT-FAILED",
        host_key="ssh-ed25519 AAAA", user="root", kernel_version="6.1.0-9-cloud-amd64",
        fio_version="fio-3.33", min_memory_mib=384,
    )  # fmt: skip
    shutil.rmtree(old)
    _fake_image(images, "cccc", fmt=image.FORMAT_VERSION + 1)  # another builder's format
    _fake_image(images, ".build-dddd-x")  # a build in progress
    assert find_image(tmp_path) is None


def test_install_replaces_atomically(tmp_path: Path) -> None:
    final = tmp_path / "images" / "kkkk"
    _fake_image(tmp_path / "images", "kkkk")
    work = tmp_path / "images" / ".build-kkkk-1"
    work.mkdir()
    (work / "marker").write_text("new")
    image._install(work, final)
    assert (final / "marker").read_text() == "new"
    assert not work.exists()
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["kkkk"]  # old one removed


def test_download_without_lists_hints_apt_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmlab.errors import CommandError

    def no_lists(argv: list[str], **kwargs: object) -> None:
        raise CommandError(
            "apt-get failed", argv=argv, returncode=100,
            output="E: Can't find a source to download version '3.33-3' of 'fio:amd64'",
        )  # fmt: skip

    monkeypatch.setattr(proc, "run", no_lists)
    with pytest.raises(HostError) as info:
        image._fetch_debs(RECORDS, tmp_path / "debs", None)
    assert info.value.hint is not None and "apt-get update" in info.value.hint
    assert list((tmp_path / "debs").iterdir()) == []  # the download dir is gone


def test_cached_deb_with_the_right_checksum_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "fio_3.33-3_amd64.deb").write_bytes(b"deb")
    rec = DebRecord("fio", "3.33-3", "pool/f/fio_3.33-3_amd64.deb",
                    hashlib.sha256(b"deb").hexdigest(), 3, "")  # fmt: skip
    monkeypatch.setattr(proc, "run", lambda *a, **k: pytest.fail("must not download"))
    assert image._fetch_debs([rec], debs, None) == {"fio": debs / "fio_3.33-3_amd64.deb"}


def test_ldd_missing_library_is_a_host_error(monkeypatch: pytest.MonkeyPatch) -> None:
    out = b"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\tlibrbd.so.1 => not found\n"
    monkeypatch.setattr(proc, "run", lambda argv, **kw: proc.Completed(tuple(argv), 0, out, b""))
    with pytest.raises(HostError, match=r"librbd\.so\.1") as info:
        image.ldd_closure(Path("/usr/bin/fio"), Path("/nonexistent"))
    assert info.value.hint is not None and "apt-get install fio" in info.value.hint
