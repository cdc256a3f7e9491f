"""The kernel: the vmlinux inside a bzImage (xz, gzip, the kernel's legacy LZ4), its PVH note."""

from __future__ import annotations

import gzip
import lzma
import struct

import lz4.block  # type: ignore[import-untyped]
import pytest

from vmlab.guest.image.kernel import extract_vmlinux, pvh_entry


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
