"""The firmware-bootable disk image's pieces: boot loader config, partition table, hole copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.guest import diskimage
from vmlab.guest.diskimage import MIB, SECTOR, _copy_into, partition_script, syslinux_cfg


def test_syslinux_boots_the_one_entry_at_once_with_the_rootfs_cmdline() -> None:
    cfg = syslinux_cfg("console=ttyS0 root=LABEL=vmlab-root rw")
    lines = [line.strip() for line in cfg.splitlines()]
    assert lines[0] == "SERIAL 0 115200"  # the boot loader shows up in serial.log
    assert "TIMEOUT 0" in lines and "PROMPT 0" in lines
    assert "APPEND console=ttyS0 root=LABEL=vmlab-root rw" in lines
    assert "KERNEL vmlinuz" in lines and "INITRD initrd.img" in lines


def test_partition_script_is_what_sfdisk_writes(tmp_path: Path) -> None:
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk is missing: apt-get install fdisk")
    boot, root = 48 * MIB // SECTOR, 100 * MIB // SECTOR
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate(MIB + (48 + 100) * MIB)
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
        input=partition_script(boot, root),
        text=True,
        check=True,
        timeout=30,
    )
    dump = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    table = json.loads(dump)["partitiontable"]
    assert table["label"] == "dos"
    first, second = table["partitions"]
    assert (first["start"], first["size"], first["type"]) == (2048, boot, "6")
    assert first.get("bootable") is True  # SeaBIOS + mbr.bin boot the active partition
    assert (second["start"], second["size"], second["type"]) == (2048 + boot, root, "83")


def test_copy_into_writes_data_at_the_offset_and_leaves_zeros_as_holes(tmp_path: Path) -> None:
    source = tmp_path / "part"
    data = b"\x55" * 4096
    with source.open("wb") as fh:
        fh.truncate(16 * MIB)
        fh.seek(9 * MIB)
        fh.write(data)
    disk = tmp_path / "disk"
    with disk.open("wb") as fh:
        fh.truncate(20 * MIB)
    _copy_into(source, disk, MIB)
    with disk.open("rb") as fh:
        fh.seek(10 * MIB)
        assert fh.read(4096) == data
        fh.seek(MIB)
        assert fh.read(4096) == bytes(4096)
    assert os.stat(disk).st_blocks * 512 < 8 * MIB  # zeros were skipped, not written


def test_missing_tools_are_named_with_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "mcopy" else "/bin/x")
    monkeypatch.setattr(diskimage, "MBR_BIN", Path("/nonexistent/mbr.bin"))
    with pytest.raises(HostError, match="mtools, syslinux-common") as info:
        diskimage.check_tools()
    assert info.value.hint == "apt-get install mtools syslinux-common"


def test_image_build_rootfs_options_need_kind_rootfs() -> None:
    from typer.testing import CliRunner

    from vmlab.cli.root import build_app

    app = build_app()
    for args in (["--disk"], ["--cloud-init"], ["--kind", "qcow2"]):
        result = CliRunner().invoke(app, ["image", "build", *args], env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert "--kind" in result.output
