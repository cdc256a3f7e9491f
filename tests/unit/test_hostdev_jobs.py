"""A fio job aimed at a passed-through device: ``disk: hostdev0`` names the first of
guest.hostdevs, checked in the spec and found in the guest by the PCI slot vmlab gave it."""

from __future__ import annotations

import pytest
import yaml

from vmlab.bench.reach import find_disks
from vmlab.errors import GuestError, SpecError
from vmlab.guest.facts import parse_facts
from vmlab.plan import plan
from vmlab.spec import parse_spec

SPEC = """
name: vfio
guest:
  hostdevs: ["0000:01:00.0", "02:00.0"]
jobs:
  - {name: on-file, rw: read}
  - {name: on-nvme, rw: randread, disk: hostdev1}
"""


def spec(text: str):  # type: ignore[no-untyped-def]
    return parse_spec(yaml.safe_load(text), source=text)


def test_a_job_names_a_passed_through_device_by_its_order() -> None:
    (case,) = plan(spec(SPEC))
    facts = parse_facts(
        "kernel 6.1\n"
        "disk vmlab-data /dev/vdb 1 0000:00:10.0\n"
        "disk S123 /dev/nvme0n1 4 0000:00:19.0\n"  # hostdev1: slot 0x18 + 1
    )
    assert find_disks(case, facts) == {"data": "/dev/vdb", "hostdev1": "/dev/nvme0n1"}


def test_a_passed_through_device_no_job_uses_is_not_looked_for() -> None:
    (case,) = plan(spec(SPEC.replace("disk: hostdev1", "disk: data")))
    facts = parse_facts("kernel 6.1\ndisk vmlab-data /dev/vdb 1 0000:00:10.0\n")
    assert find_disks(case, facts) == {"data": "/dev/vdb"}  # e.g. a NIC passed through


def test_a_passed_through_device_without_a_block_device_names_both_addresses() -> None:
    (case,) = plan(spec(SPEC))
    facts = parse_facts("kernel 6.1\ndisk vmlab-data /dev/vdb 1 0000:00:10.0\n")
    with pytest.raises(GuestError) as missing:
        find_disks(case, facts)
    message = str(missing.value)
    assert "hostdev1 (host 02:00.0, guest PCI 0000:00:19.0) has no block device" in message
    assert "/dev/vdb (0000:00:10.0)" in message


def test_a_job_on_a_hostdev_the_guest_lacks_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"no disk named 'hostdev2' \(disks: data, hostdev0"):
        spec(SPEC.replace("disk: hostdev1", "disk: hostdev2"))
    matrix = SPEC.replace(
        'hostdevs: ["0000:01:00.0", "02:00.0"]',
        'hostdevs: [["0000:01:00.0"], ["01:00.0", "02:00.0"]]',
    )
    with pytest.raises(
        SpecError, match="hostdev1 is a passed-through device that some guests lack"
    ):
        spec(matrix)


def test_hostdev_names_are_not_disk_names() -> None:
    with pytest.raises(SpecError, match="disk name hostdev0 is taken"):
        spec("name: a\nguest: {disks: [{name: hostdev0}]}\n")


def test_a_host_baseline_of_a_passed_through_device_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"jobs\.on-nvme\.disk: the host baseline runs fio"):
        spec("baseline: true\n" + SPEC)
