"""A firmware-bootable disk image from a vmlab rootfs: a cloud image built on this host.

Real cloud images boot the way this one does — BIOS, the boot code in the MBR, a boot loader,
the image's own kernel and initrd — so ``image: {kind: cloud, source: <this file>}`` exercises
vmlab's whole cloud path (overlay, NoCloud seed, firmware boot order, cloud-init) without a
download. Layout, all written as files (no loop device, no mount)::

    sector 0         syslinux's mbr.bin + an MBR partition table (sfdisk on the file)
    partition 1      FAT16, active: ldlinux.sys (``syslinux --install`` through mtools),
                     syslinux.cfg, the Debian kernel's bzImage, the rootfs's initrd
    partition 2      the rootfs's ext4 file system (label vmlab-root), copied block by block

The result is a qcow2 file next to the rootfs in the cache; it is rebuilt when its inputs change
(the rootfs key, the kernel, this layout's version).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from vmlab import proc
from vmlab.errors import HostError
from vmlab.guest.cloud import image_info
from vmlab.guest.image.cache import sha256_file
from vmlab.guest.rootfs import RootfsImage

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
MIB = 1 << 20
SECTOR = 512
FIRST_PART_MIB = 1  # partition 1 starts at 1 MiB, as every partitioner does
BOOT_PART_MIB = 48  # bzImage (~14 MiB) + initrd + slack
MBR_CODE_BYTES = 440  # the boot code; the partition table starts at byte 446
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
TOOLS = (
    ("syslinux", "syslinux"),
    ("mkfs.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("qemu-img", "qemu-utils"),
)
TOOL_TIMEOUT_S = 300.0  # qemu-img converting a rootfs of a few hundred MB takes seconds
DISK_NAME = "disk.qcow2"
STAMP_NAME = "disk.json"


def check_tools() -> None:
    missing = [package for tool, package in TOOLS if shutil.which(tool) is None]
    if not MBR_BIN.is_file():
        missing.append("syslinux-common")
    if missing:
        raise HostError(
            "building a firmware-bootable disk image needs " + ", ".join(sorted(set(missing))),
            hint="apt-get install " + " ".join(sorted(set(missing))),
        )


def syslinux_cfg(cmdline: str) -> str:
    """Boot the one entry at once, with the boot loader talking on the serial console too."""
    return (
        "SERIAL 0 115200\n"
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL linux\n"
        "  KERNEL vmlinuz\n"
        "  INITRD initrd.img\n"
        f"  APPEND {cmdline}\n"
    )


def partition_script(boot_sectors: int, root_sectors: int) -> str:
    """sfdisk input: an MBR with an active FAT16 boot partition, then the Linux root."""
    first = FIRST_PART_MIB * MIB // SECTOR
    return (
        "label: dos\n"
        f"start={first}, size={boot_sectors}, type=6, bootable\n"
        f"start={first + boot_sectors}, size={root_sectors}, type=83\n"
    )


def _copy_into(source: Path, disk: Path, offset: int) -> None:
    """Copy ``source`` into ``disk`` at ``offset``, leaving runs of zeros as holes."""
    chunk = 4 * MIB
    zeros = bytes(chunk)
    with source.open("rb") as src, disk.open("r+b") as dst:
        position = offset
        while block := src.read(chunk):
            if block != zeros[: len(block)]:
                dst.seek(position)
                dst.write(block)
            position += len(block)


def _inputs(rootfs: RootfsImage) -> dict[str, object]:
    return {
        "layout": LAYOUT_VERSION,
        "rootfs": rootfs.key,
        "bzimage_sha256": sha256_file(rootfs.bzimage),
        "cmdline": rootfs.cmdline,
    }


def build_disk_image(rootfs: RootfsImage, *, out_dir: Path | None = None) -> Path:
    """The rootfs as a firmware-bootable qcow2 (cached in ``out_dir``, default its own dir)."""
    check_tools()
    if not rootfs.bzimage.is_file():
        raise HostError(
            f"the kernel {rootfs.bzimage} of rootfs {rootfs.key} is gone from the image cache",
            hint="rebuild: vmlab image build --kind rootfs --force",
        )
    out_dir = out_dir or rootfs.root
    disk_out, stamp = out_dir / DISK_NAME, out_dir / STAMP_NAME
    inputs = _inputs(rootfs)
    if disk_out.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == inputs:
                return disk_out
        except (OSError, ValueError):
            pass
    work = out_dir / "disk.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        root_raw = work / "root.raw"
        proc.run(
            ["qemu-img", "convert", "-O", "raw", str(rootfs.base), str(root_raw)],
            timeout_s=TOOL_TIMEOUT_S,
        )
        root_bytes = root_raw.stat().st_size
        if root_bytes % SECTOR:
            raise HostError(f"{rootfs.base} is not a whole number of sectors ({root_bytes} B)")

        boot = work / "boot.fat"
        with boot.open("wb") as fh:
            fh.truncate(BOOT_PART_MIB * MIB)
        proc.run(["mkfs.fat", "-F", "16", "-n", "VMLAB-BOOT", str(boot)], timeout_s=TOOL_TIMEOUT_S)
        # syslinux writes its loader through mtools: no mount
        proc.run(["syslinux", "--install", str(boot)], timeout_s=TOOL_TIMEOUT_S)
        (work / "syslinux.cfg").write_text(syslinux_cfg(rootfs.cmdline))
        for name, path in (
            ("vmlinuz", rootfs.bzimage),
            ("initrd.img", rootfs.initrd),
            ("syslinux.cfg", work / "syslinux.cfg"),
        ):
            proc.run(
                ["mcopy", "-o", "-i", str(boot), str(path), f"::{name}"], timeout_s=TOOL_TIMEOUT_S
            )

        boot_sectors = BOOT_PART_MIB * MIB // SECTOR
        root_sectors = root_bytes // SECTOR
        disk = work / "disk.raw"
        with disk.open("wb") as fh:
            fh.truncate(FIRST_PART_MIB * MIB + BOOT_PART_MIB * MIB + root_bytes)
        proc.run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
            timeout_s=TOOL_TIMEOUT_S,
            input_bytes=partition_script(boot_sectors, root_sectors).encode(),
        )
        with disk.open("r+b") as fh:  # boot code only: bytes 440.. hold the partition table
            fh.write(MBR_BIN.read_bytes()[:MBR_CODE_BYTES])
        _copy_into(boot, disk, FIRST_PART_MIB * MIB)
        _copy_into(root_raw, disk, (FIRST_PART_MIB + BOOT_PART_MIB) * MIB)

        tmp_out = work / DISK_NAME
        proc.run(
            ["qemu-img", "convert", "-O", "qcow2", str(disk), str(tmp_out)],
            timeout_s=TOOL_TIMEOUT_S,
        )
        if image_info(tmp_out).format != "qcow2":
            raise HostError(f"qemu-img wrote {tmp_out} but does not read it back as qcow2")
        tmp_out.replace(disk_out)
        stamp.write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        log.info("firmware-bootable disk image: %s", disk_out)
        return disk_out
    finally:
        shutil.rmtree(work, ignore_errors=True)
