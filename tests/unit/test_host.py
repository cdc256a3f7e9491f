from __future__ import annotations

import pytest

from vmlab.errors import VmlabError
from vmlab.host import PROBE_MARKER, HostFacts, boot_sector, pick_accel


def test_boot_sector_is_a_valid_mbr_that_carries_the_marker() -> None:
    sector = boot_sector()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    # mov si, imm16 points at the message inside the sector loaded at 0x7c00
    offset = int.from_bytes(sector[6:8], "little") - 0x7C00
    assert sector[offset:].startswith(PROBE_MARKER.encode())


def facts(accel: str) -> HostFacts:
    return HostFacts(
        hostname="h",
        kernel="k",
        cpus=2,
        memory_mib=1,
        qemu="q",
        qemu_version="7.2",
        qemu_img=None,
        qemu_storage_daemon=None,
        fio_version=None,
        accel=accel,  # type: ignore[arg-type]
        accel_reason="probe said so",
        kvm_device=True,
        vhost_net=False,
        iommu_groups=0,
        hugepages_2m_total=0,
        hugepages_2m_free=0,
        missing=[],
    )


def test_auto_takes_what_the_probe_found_and_kvm_is_refused_when_it_does_not_work() -> None:
    assert pick_accel(facts("tcg"), "auto") == "tcg"
    assert pick_accel(facts("kvm"), "auto") == "kvm"
    assert pick_accel(facts("kvm"), "tcg") == "tcg"
    with pytest.raises(VmlabError, match="asks for KVM, but probe said so"):
        pick_accel(facts("tcg"), "kvm")
