"""krbd in the guest (a disk with target guest and backend.krbd): the on-demand module loader
the default image carries, the mapping written to /sys/bus/rbd/add, and the fio job on the
mapped device. tests/integration/test_rbd.py maps a real image in a real guest."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmlab.ceph.info import ClusterInfo
from vmlab.errors import GuestError, HostError
from vmlab.guest.image.initramfs import ON_DEMAND_GUEST_DIR, render_init
from vmlab.spec import FioJob
from vmlab.storage.guest import GuestCeph, krbd_mon_addr

KEY = "AQBhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMg=="


def loader(tmp_path: Path) -> Path:
    """The image's vmlab-modules script, reading its lists from tmp_path."""
    text = render_init()
    body = re.search(r"cat > /usr/sbin/vmlab-modules <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert body is not None
    script = tmp_path / "vmlab-modules"
    script.write_text(body.group(1).replace(ON_DEMAND_GUEST_DIR, str(tmp_path / "lists")))
    return script


def test_the_loader_insmods_a_group_in_order_and_skips_what_is_loaded(tmp_path: Path) -> None:
    loaded = next(p.name for p in Path("/sys/module").iterdir())  # any module this host has
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/rbd").write_text(f"/m/libceph.ko\n/m/{loaded}.ko\n\n/m/rbd.ko\n")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "insmod").write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/calls\n')
    (shim / "insmod").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", loader(tmp_path), "rbd"], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text().split() == ["/m/libceph.ko", "/m/rbd.ko"]


def test_the_loader_names_a_group_the_image_lacks(tmp_path: Path) -> None:
    argv = ["sh", loader(tmp_path), "nosuch"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "this image carries no module group 'nosuch'" in done.stderr


def test_the_kernel_client_gets_the_msgr1_address() -> None:
    assert krbd_mon_addr("[v2:10.9.0.1:3300/0,v1:10.9.0.1:6789/0]") == "10.9.0.1:6789"
    assert krbd_mon_addr("[v2:10.9.0.1:3301,v1:10.9.0.1:6889]") == "10.9.0.1:6889"
    with pytest.raises(HostError, match="no msgr1"):
        krbd_mon_addr("v2:10.9.0.1:3300")


class Guest:
    def __init__(self, listing: str) -> None:
        self.listing = listing
        self.calls: list[tuple[str, bytes | None]] = []

    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> Any:
        self.calls.append((command, stdin))
        out = self.listing.encode() if command.startswith("for d in") else b""
        return subprocess.CompletedProcess(command, 0, stdout=out)

    def put(self, data: bytes, remote: str, *, mode: int = 0o644) -> None:
        raise AssertionError("map_krbd pushes nothing")


def ceph(tmp_path: Path) -> GuestCeph:
    keyring = tmp_path / "keyring"
    keyring.write_text(f"[client.admin]\n\tkey = {KEY}\n")
    info = ClusterInfo(
        conf_path=tmp_path / "ceph.conf",
        keyring_path=keyring,
        fsid="f",
        mon_addr="[v2:10.9.0.1:3300/0,v1:10.9.0.1:6789/0]",
        pool="vmlab",
        state_dir=tmp_path,
    )
    gc = GuestCeph(cluster=None, info=info)  # type: ignore[arg-type]  # map_krbd needs no cluster
    gc.krbd["data"] = ("vmlab", "img-data")
    return gc


def test_mapping_sends_the_secret_on_stdin_and_finds_the_device(tmp_path: Path) -> None:
    guest = Guest("/dev/rbd0\n")
    assert ceph(tmp_path).map_krbd(guest) == {"data": "/dev/rbd0"}
    load, add, find = guest.calls
    assert load[0] == "[ -d /sys/bus/rbd ] || vmlab-modules rbd || modprobe rbd"
    assert add == (
        "f=/sys/bus/rbd/add_single_major; [ -e $f ] || f=/sys/bus/rbd/add; cat > $f",
        f"10.9.0.1:6789 name=admin,secret={KEY} vmlab img-data -".encode(),
    )
    assert KEY not in find[0] and "= vmlab/img-data ]" in find[0]


@pytest.mark.parametrize("listing", ["", "/dev/rbd0 /dev/rbd1"])
def test_a_mapping_that_is_not_exactly_one_device_fails(tmp_path: Path, listing: str) -> None:
    with pytest.raises(GuestError, match="disk data: mapping vmlab/img-data in the guest"):
        ceph(tmp_path).map_krbd(Guest(listing))


def test_nothing_to_map_runs_nothing(tmp_path: Path) -> None:
    gc = ceph(tmp_path)
    gc.krbd.clear()
    guest = Guest("")
    assert gc.map_krbd(guest) == {} and guest.calls == []


def test_a_krbd_disk_keeps_its_engine_and_an_image_disk_goes_through_rbd(tmp_path: Path) -> None:
    gc = ceph(tmp_path)
    gc.images["lib"] = ("vmlab", "img-lib")
    on_krbd = gc.fio_job(FioJob(name="j", rw="randread", disk="data"))
    assert on_krbd.ioengine != "rbd" and "rbdname" not in on_krbd.options
    on_rbd = gc.fio_job(FioJob(name="j", rw="randread", disk="lib"))
    assert on_rbd.ioengine == "rbd" and on_rbd.options["rbdname"] == "img-lib"


class RefusingGuest(Guest):
    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> Any:
        if "cat > $f" in command:
            raise GuestError("exit 1", stderr=b"cat: write error: Invalid argument\n")
        if command.startswith("dmesg"):
            return subprocess.CompletedProcess(command, 0, stdout=b"libceph: bad option\n")
        return super().run(command, timeout_s=timeout_s, check=check, stdin=stdin)


def test_a_refused_mapping_names_the_monitor_and_shows_the_kernel_log(tmp_path: Path) -> None:
    with pytest.raises(GuestError) as refused:
        ceph(tmp_path).map_krbd(RefusingGuest(""))
    message = str(refused.value)
    assert "did not map vmlab/img-data from 10.9.0.1:6789" in message
    assert "Invalid argument" in message and "libceph: bad option" in message
    assert KEY not in message  # the secret stays out of errors and logs
