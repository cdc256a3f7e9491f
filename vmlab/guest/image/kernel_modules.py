"""Kernel modules of a guest: what to load, in which order, from which file.

Debian's cloud kernel builds virtio, SCSI, NVMe and the ACPI button as modules. Without
depmod or modprobe in the guest, the init loads a list of files with ``insmod``; the order
comes from each module's ``.modinfo`` (``depends=``, and ``softdep=pre:`` where present), read
here from the ELF section; modules in ``modules.builtin`` are skipped. Compressed modules
(.ko.xz, .ko.gz, .ko.zst) are decompressed, since busybox insmod takes plain ELF. The default
image and the rootfs initramfs (:mod:`vmlab.guest.rootfs`) both plan their modules here.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vmlab import proc
from vmlab.errors import HostError


@dataclass(frozen=True)
class ModulePlan:
    """Kernel modules to insmod, dependencies first, and the needed ones built into the kernel."""

    load_order: tuple[str, ...]  # paths relative to /lib/modules/<kver>/, e.g. kernel/…/x.ko
    builtin: tuple[str, ...]  # module names


def module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    name = path.name
    if name.endswith(".ko"):
        return data
    if name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if name.endswith(".ko.zst"):
        return proc.run(
            ["zstd", "-dc"], input_bytes=data, timeout_s=60, missing_hint="apt-get install zstd"
        ).stdout
    raise HostError(f"unknown kernel module compression: {path}")


def _elf_sections(elf: bytes) -> dict[str, bytes]:
    """Section name → contents of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = []
    for i in range(shnum):
        _name, sh_type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        headers.append((_name, sh_type, offset, size))
    _n, _t, str_off, str_size = headers[shstrndx]
    strtab = elf[str_off : str_off + str_size]
    sections = {}
    for name_off, sh_type, offset, size in headers:
        name = strtab[name_off : strtab.index(b"\0", name_off)].decode()
        sections[name] = b"" if sh_type == 8 else elf[offset : offset + size]  # 8: NOBITS
    return sections


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The ``.modinfo`` key=value strings of a module (.ko, .ko.xz, .ko.gz, .ko.zst)."""
    try:
        sections = _elf_sections(module_bytes(path))
    except (ValueError, struct.error, lzma.LZMAError, OSError) as exc:
        raise HostError(f"cannot read kernel module {path}: {exc}") from exc
    info: dict[str, list[str]] = {}
    for raw in sections.get(".modinfo", b"").split(b"\0"):
        key, sep, value = raw.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def module_name(path: str | Path) -> str:
    """'kernel/lib/crc-t10dif.ko.xz' → 'crc_t10dif' (the kernel's spelling)."""
    name = PurePosixPath(str(path)).name
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Sequence[str]) -> ModulePlan:
    """Order ``wanted`` and their ``depends=`` (and existing ``softdep=pre:``) modules so that
    every module comes after what it needs; skip those listed in ``modules.builtin``."""
    builtin_file = moddir / "modules.builtin"
    builtin = (
        {module_name(line.strip()) for line in builtin_file.read_text().splitlines() if line}
        if builtin_file.is_file()
        else set()
    )
    files: dict[str, Path] = {}
    for path in sorted(moddir.rglob("*.ko*")):
        if re.search(r"\.ko(\.(xz|gz|zst))?$", path.name):
            files.setdefault(module_name(path), path)

    order: list[str] = []
    done: set[str] = set()
    builtin_hit: list[str] = []

    def visit(name: str, chain: tuple[str, ...], *, required: bool) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in chain:
            raise HostError(f"kernel module dependency cycle: {' → '.join((*chain, name))}")
        if name in builtin:
            done.add(name)
            builtin_hit.append(name)
            return
        if name not in files:
            if required:
                raise HostError(
                    f"kernel module {name} (needed by {' → '.join(chain) or 'the guest'}) is "
                    f"neither in {moddir} nor built in",
                    hint="the guest kernel package changed: update vmlab.guest.image.MODULES",
                )
            return
        info = read_modinfo(files[name])
        for dep in (d for v in info.get("depends", []) for d in v.split(",") if d):
            visit(dep, (*chain, name), required=True)
        for soft in info.get("softdep", []):
            pre = re.search(r"pre:\s*(.*?)(\s+post:|$)", soft)
            for dep in pre.group(1).split() if pre else []:
                visit(dep, (*chain, name), required=False)
        done.add(name)
        order.append(files[name].relative_to(moddir).as_posix())

    for name in wanted:
        visit(name, (), required=True)
    return ModulePlan(load_order=tuple(order), builtin=tuple(builtin_hit))
