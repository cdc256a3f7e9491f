"""Kernel modules: .modinfo from plain and compressed ELF files, load order, built-ins."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.guest.image.kernel_modules import module_name, read_modinfo, resolve_modules

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


def test_the_rootfs_initramfs_unpacks_xz_modules_for_busybox_insmod(tmp_path: Path) -> None:
    """Debian's 6.12 (bookworm-backports) ships .ko.xz; busybox insmod loads plain .ko only."""
    from vmlab.guest.cpio import iter_entries
    from vmlab.guest.rootfs.initrd import write_initrd

    tree = tmp_path / "kernel"
    d = tree / "lib/modules/6.12.0-test"
    _module(d, "kernel/drivers/virtio/virtio.ko", compress=".xz")
    _module(d, "kernel/drivers/virtio/virtio_ring.ko", compress=".xz")
    _module(d, "kernel/drivers/virtio/virtio_pci.ko", depends="virtio_ring,virtio",
            compress=".xz")  # fmt: skip
    _module(d, "kernel/drivers/block/virtio_blk.ko", depends="virtio_ring,virtio",
            compress=".xz")  # fmt: skip
    busybox = tmp_path / "busybox/bin/busybox"
    busybox.parent.mkdir(parents=True)
    busybox.write_text("#!/bin/sh\necho bin/sh\n")  # answers --list-full like busybox
    busybox.chmod(0o755)
    out = tmp_path / "initrd.img"
    write_initrd(out, busybox_tree=tmp_path / "busybox", kernel_tree=tree,
                 kernel_version="6.12.0-test")  # fmt: skip
    with out.open("rb") as f:
        members = {m.name: m for m in iter_entries(f)}
    blk = members["usr/lib/modules/6.12.0-test/kernel/drivers/block/virtio_blk.ko"]
    assert blk.data.startswith(b"\x7fELF")  # unpacked
    listed = next(m for n, m in members.items() if n.endswith("vmlab/modules")).data.split()
    assert listed and all(p.endswith(b".ko") for p in listed), listed
