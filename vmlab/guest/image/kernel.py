"""The guest kernel: Debian's bzImage, and the uncompressed vmlinux QEMU boots faster (PVH).

A bzImage is a setup stub plus a compressed payload (Debian's cloud kernel: LZ4, the kernel's
"legacy" framing); the payload is the kernel's ELF. When that ELF carries the PVH entry note
(XEN_ELFNOTE_PHYS32_ENTRY), QEMU's ``-kernel`` boots it directly, 1 to 3 s faster under TCG than
the bzImage's own decompressor. Every image keeps the bzImage too (:data:`BZIMAGE`): firmware
boot loaders (the rootfs disk image) need it.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import shutil
import struct
import zlib
from pathlib import Path

import lz4.block  # type: ignore[import-untyped]

from vmlab import proc

log = logging.getLogger(__name__)

BZIMAGE = "vmlinuz"  # the kernel as Debian ships it (a bzImage), kept in every image


def _decompress_lz4_legacy(payload: bytes) -> bytes:
    """The kernel's LZ4 "legacy" format: blocks of at most 8 MiB after a magic, then the
    uncompressed size the kernel's build appends (the caller checks it)."""
    out = []
    pos = 4  # after the magic 02 21 4c 18
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if size == 0x184C2102:
            continue  # concatenated frame
        if pos + size > len(payload):
            break  # the trailing size word
        out.append(lz4.block.decompress(payload[pos : pos + size], uncompressed_size=8 << 20))
        pos += size
    return b"".join(out)


def _decompress_zstd(payload: bytes) -> bytes | None:
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if shutil.which("zstd") is None:
            return None
        done = proc.run(["zstd", "-dc"], input_bytes=payload, timeout_s=120, check=False)
        return done.stdout or None
    out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    return out


def _decompress_payload(payload: bytes) -> bytes | None:
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    if payload.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _decompress_zstd(payload)
    if payload.startswith(b"\x02\x21\x4c\x18"):
        return _decompress_lz4_legacy(payload)
    log.info("vmlinux: unknown kernel payload compression %s", payload[:6].hex())
    return None


_PAYLOAD_MAGICS = (b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18")


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF inside a bzImage, or None if it cannot be decompressed here.

    The setup header (boot protocol >= 2.08) says where the payload is, and the kernel's build
    appends the uncompressed size to it, which checks the result. Without such a header the
    first known compression magic is tried.
    """
    candidates: list[tuple[bytes, int | None]] = []
    if bzimage[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bzimage, 0x206)[0] >= 0x208:
        setup_sects = bzimage[0x1F1] or 4
        start = (setup_sects + 1) * 512
        offset, length = struct.unpack_from("<II", bzimage, 0x248)
        payload = bzimage[start + offset : start + offset + length]
        if length >= 8 and len(payload) == length:
            candidates.append((payload, struct.unpack_from("<I", payload, length - 4)[0]))
    if not candidates:
        for magic in _PAYLOAD_MAGICS:
            if (at := bzimage.find(magic)) >= 0:
                candidates.append((bzimage[at:], None))
    for payload, expected in candidates:
        try:
            elf = _decompress_payload(payload)
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
            log.debug("vmlinux: payload did not decompress: %s", exc)
            continue
        if elf and elf[:4] == b"\x7fELF" and expected in (None, len(elf)):
            return elf
        log.debug("vmlinux: payload gave %d bytes, expected %s", len(elf or b""), expected)
    return None


XEN_ELFNOTE_PHYS32_ENTRY = 18


def pvh_entry(elf: bytes) -> int | None:
    """The PVH entry point (ELF note "Xen" type 18), or None if the kernel cannot boot PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return None
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            desc_at = pos + 12 + ((namesz + 3) & ~3)
            desc = elf[desc_at : desc_at + descsz]
            pos = desc_at + ((descsz + 3) & ~3)
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                value = int.from_bytes(desc, "little")
                if value:
                    return value
    return None


def prepare_kernel(work: Path, bzimage_src: Path) -> tuple[str, str, str]:
    """Copy the bzImage to ``work/vmlinuz``; also write ``work/vmlinux`` if it boots PVH.
    Returns (file to boot, kind, note)."""
    bzimage = bzimage_src.read_bytes()
    (work / BZIMAGE).write_bytes(bzimage)
    vmlinux = extract_vmlinux(bzimage)
    if vmlinux is None:
        return BZIMAGE, "bzImage", "could not decompress the bzImage payload here"
    entry = pvh_entry(vmlinux)
    if entry is None:
        return BZIMAGE, "bzImage", "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
    (work / "vmlinux").write_bytes(vmlinux)
    return "vmlinux", "vmlinux-pvh", f"PVH entry {entry:#x}"
