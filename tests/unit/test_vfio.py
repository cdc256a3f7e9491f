"""VFIO preflight, binding and restore against generated sysfs trees (and one real read)."""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path

import pytest
from sysfs_fixture import FakeSysfsTree, KernelSysfs

from vmlab.errors import HostError, SpecError
from vmlab.vfio import (
    ProblemCode,
    Sysfs,
    bind_vfio,
    check_passthrough,
    libvirt_hostdev,
    normalize_address,
    recover_stale,
    restore,
    vfio_bound,
)

NVME = "0000:01:00.0"
NIC = "0000:02:00.0"
NIC_FN1 = "0000:02:00.1"
BRIDGE = "0000:00:1c.0"
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def codes(problems: object) -> list[str]:
    assert isinstance(problems, tuple)
    return [p.code for p in problems]


@pytest.fixture
def tree(tmp_path: Path) -> FakeSysfsTree:
    """An IOMMU host: an NVMe alone in group 12, a two-function NIC in group 13."""
    t = FakeSysfsTree(tmp_path / "root")
    t.add_device(NVME, driver="nvme", group=12)
    t.add_device(
        NIC, vendor="0x8086", device="0x1521", pci_class="0x020000", driver="igb", group=13
    )
    t.add_device(
        NIC_FN1, vendor="0x8086", device="0x1521", pci_class="0x020000", driver="igb", group=13
    )
    return t


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vfio-bindings.json"


# ---- addresses and rendering


def test_normalize_address_accepts_short_form_and_rejects_garbage() -> None:
    assert normalize_address("01:00.0") == "0000:01:00.0"
    assert normalize_address("0000:3B:00.1") == "0000:3b:00.1"
    assert normalize_address("10000:e1:00.0") == "10000:e1:00.0"  # VMD domains have 5 digits
    for bad in ("01:00", "01:20.0", "0000:01:00.8", "nvme0", ""):
        with pytest.raises(SpecError):
            normalize_address(bad)


def test_libvirt_hostdev_hex_fields() -> None:
    assert libvirt_hostdev("3b:1f.7") == {
        "domain": "0x0000",
        "bus": "0x3b",
        "slot": "0x1f",
        "function": "0x7",
    }


# ---- preflight


def test_healthy_device_reports_ids_driver_group(tree: FakeSysfsTree) -> None:
    report = check_passthrough(["01:00.0"], root=tree.root)
    assert report.ok, report.describe()
    (dev,) = report.devices
    assert dev.address == NVME
    assert dev.ids == "144d:a808"
    assert dev.driver == "nvme"
    assert dev.iommu_group == 12
    assert dev.group_members == ()


def test_iommu_off_intel_without_cmdline_arg_names_intel_iommu_on(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, iommu=False, cmdline="root=/dev/sda1 ro")
    t.add_device(NVME, driver="nvme", group=12)
    report = check_passthrough([NVME], root=t.root)
    assert not report.ok
    (dev,) = report.devices
    assert dev.iommu_group is None
    (problem,) = dev.problems
    assert problem.code == ProblemCode.IOMMU_OFF
    assert "add intel_iommu=on" in problem.hint
    assert "lacks intel_iommu=on" in problem.message


def test_iommu_off_with_intel_iommu_on_points_at_firmware(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, iommu=False, cmdline="root=/dev/sda1 intel_iommu=on iommu=pt")
    t.add_device(NVME, driver="nvme", group=12)
    (problem,) = check_passthrough([NVME], root=t.root).devices[0].problems
    assert problem.code == ProblemCode.IOMMU_OFF
    assert "add intel_iommu=on" not in problem.hint
    assert "VT-d" in problem.hint and "firmware" in problem.hint


def test_iommu_off_by_cmdline_says_remove_it(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, iommu=False, cmdline="amd_iommu=off", cpu_vendor="AuthenticAMD")
    t.add_device(NVME, driver="nvme", group=12)
    (problem,) = check_passthrough([NVME], root=t.root).devices[0].problems
    assert "remove amd_iommu=off" in problem.hint


def test_iommu_off_on_amd_points_at_firmware_not_a_made_up_argument(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, iommu=False, cmdline="root=/dev/sda1", cpu_vendor="AuthenticAMD")
    t.add_device(NVME, driver="nvme", group=12)
    (problem,) = check_passthrough([NVME], root=t.root).devices[0].problems
    assert "AMD-Vi" in problem.hint and "firmware" in problem.hint
    assert "amd_iommu=on" not in problem.hint and "intel_iommu" not in problem.hint


def test_device_in_no_group_while_iommu_is_on(tree: FakeSysfsTree) -> None:
    tree.add_device("0000:05:00.0", driver="ahci", group=None)
    (problem,) = check_passthrough(["05:00.0"], root=tree.root).devices[0].problems
    assert problem.code == ProblemCode.IOMMU_OFF
    assert "no IOMMU group although the IOMMU is on" in problem.message


def test_group_unviable_when_sibling_on_host_driver(tree: FakeSysfsTree) -> None:
    report = check_passthrough([NIC], root=tree.root)
    assert not report.ok
    (dev,) = report.devices
    assert [(m.address, m.driver) for m in dev.group_members] == [(NIC_FN1, "igb")]
    (problem,) = dev.problems
    assert problem.code == ProblemCode.GROUP_UNVIABLE
    assert NIC_FN1 in problem.message and "igb" in problem.message
    with pytest.raises(HostError, match="group 13") as exc:
        report.raise_for_problems()
    assert exc.value.hint is not None and NIC_FN1 in exc.value.hint


def test_group_viable_when_sibling_is_passed_too_or_stubbed(tree: FakeSysfsTree) -> None:
    assert check_passthrough([NIC, NIC_FN1], root=tree.root).ok
    tree.add_device("0000:03:00.0", driver="pci-stub", group=14)
    tree.add_device("0000:03:00.1", driver="snd_hda_intel", group=14)
    report = check_passthrough(["0000:03:00.1"], root=tree.root)
    assert report.ok, report.describe()


def test_group_viable_with_bridge_sibling(tree: FakeSysfsTree) -> None:
    tree.add_device(
        BRIDGE, vendor="0x8086", device="0xa110", pci_class="0x060400", driver="pcieport", group=20
    )
    tree.add_device("0000:04:00.0", driver="nvme", group=20)
    report = check_passthrough(["04:00.0"], root=tree.root)
    assert report.ok, report.describe()
    (member,) = report.devices[0].group_members
    assert member.address == BRIDGE and member.driver == "pcieport" and member.is_bridge


def test_non_bridge_class_with_pcieport_like_driver_is_unviable(tree: FakeSysfsTree) -> None:
    # A host bridge (0x0600) bound to some driver is not a PCI-to-PCI bridge.
    tree.add_device("0000:00:00.0", pci_class="0x060000", driver="agpgart", group=21)
    tree.add_device("0000:06:00.0", driver="nvme", group=21)
    codes_ = codes(check_passthrough(["06:00.0"], root=tree.root).devices[0].problems)
    assert codes_ == [ProblemCode.GROUP_UNVIABLE]


def test_already_bound_is_a_note_not_a_problem(tree: FakeSysfsTree) -> None:
    tree.add_device("0000:07:00.0", driver="vfio-pci", group=22)
    report = check_passthrough(["07:00.0"], root=tree.root)
    assert report.ok
    (dev,) = report.devices
    assert dev.bound_to_vfio
    assert any("already bound to vfio-pci" in n for n in dev.notes)


def test_missing_device(tree: FakeSysfsTree) -> None:
    report = check_passthrough(["0000:09:00.0", NVME], root=tree.root)
    missing, present = report.devices
    assert not missing.found
    assert codes(missing.problems) == [ProblemCode.DEVICE_NOT_FOUND]
    assert present.found and not present.problems
    assert not report.ok


def test_vfio_module_and_dev_node_missing(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, vfio_module=False, dev_vfio=False)
    t.add_device(NVME, driver="nvme", group=12)
    report = check_passthrough([NVME], root=t.root)
    assert codes(report.problems) == [
        ProblemCode.VFIO_MODULE_MISSING,
        ProblemCode.DEV_VFIO_MISSING,
    ]
    assert "modprobe vfio-pci" in report.problems[0].hint


def test_dev_vfio_missing_with_module_loaded_hints_container(tmp_path: Path) -> None:
    t = FakeSysfsTree(tmp_path, dev_vfio=False)
    t.add_device(NVME, driver="nvme", group=12)
    (problem,) = check_passthrough([NVME], root=t.root).problems
    assert problem.code == ProblemCode.DEV_VFIO_MISSING
    assert "container" in problem.hint


def test_memlock_too_low(tree: FakeSysfsTree) -> None:
    limits = (64 * 1024 * 1024, 64 * 1024 * 1024)
    report = check_passthrough([NVME], root=tree.root, memory_mib=2048, getrlimit=lambda _r: limits)
    (problem,) = report.problems
    assert problem.code == ProblemCode.MEMLOCK_TOO_LOW
    assert "64 MiB" in problem.message and "3072 MiB" in problem.message
    assert "ulimit -l unlimited" in problem.hint and "LimitMEMLOCK" in problem.hint
    assert "limits.conf" in problem.hint  # the hard limit is too low as well


def test_memlock_enough_or_unlimited_or_cap_ipc_lock(tree: FakeSysfsTree) -> None:
    enough = (4096 * 1024 * 1024, resource.RLIM_INFINITY)
    for lim in (enough, UNLIMITED):

        def getrlimit(_resource: int, lim: tuple[int, int] = lim) -> tuple[int, int]:
            return lim

        report = check_passthrough([NVME], root=tree.root, memory_mib=2048, getrlimit=getrlimit)
        assert report.ok, report.describe()
    # Root-like process: CAP_IPC_LOCK (bit 14) in CapEff lifts the limit for VFIO.
    (tree.root / "proc/self").mkdir()
    (tree.root / "proc/self/status").write_text("Name:\tpython\nCapEff:\t0000000000004000\n")
    report = check_passthrough(
        [NVME], root=tree.root, memory_mib=2048, getrlimit=lambda _r: (8 << 20, 8 << 20)
    )
    assert report.ok
    assert any("CAP_IPC_LOCK" in n for n in report.notes)


def test_check_never_writes(tree: FakeSysfsTree) -> None:
    def refuse(rel: str, value: str) -> None:
        raise AssertionError(f"preflight wrote {value!r} to {rel}")

    check_passthrough([NVME, NIC, "0000:09:00.0"], sysfs=KernelSysfs(tree, before_write=refuse))


# ---- binding and restore


def test_bind_then_restore_returns_original_driver_and_override(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    tree.add_device("0000:08:00.0", driver="nvme", override="nvme", group=30)
    fs = KernelSysfs(tree)
    bindings = bind_vfio([NVME, "08:00.0"], state_file=state_file, sysfs=fs)
    assert [(b.address, b.original_driver, b.original_override) for b in bindings] == [
        (NVME, "nvme", ""),
        ("0000:08:00.0", "nvme", "nvme"),
    ]
    for addr in (NVME, "0000:08:00.0"):
        assert tree.driver_of(addr) == "vfio-pci"
        assert tree.override_of(addr) == "vfio-pci"
    assert (tree.root / "dev/vfio/12").exists()
    assert state_file.exists()

    restored = restore(state_file, sysfs=fs)
    assert [b.address for b in restored] == [NVME, "0000:08:00.0"]
    assert tree.driver_of(NVME) == "nvme" and tree.override_of(NVME) == ""
    assert tree.driver_of("0000:08:00.0") == "nvme"
    assert tree.override_of("0000:08:00.0") == "nvme"
    assert not state_file.exists()
    assert not (tree.root / "dev/vfio/12").exists()
    # The override was cleared with "\n" (the kernel's way to unset it).
    assert (f"sys/bus/pci/devices/{NVME}/driver_override", "\n") in fs.writes


def test_bind_uses_driver_override_sequence(tree: FakeSysfsTree, state_file: Path) -> None:
    fs = KernelSysfs(tree)
    bind_vfio([NVME], state_file=state_file, sysfs=fs)
    assert fs.writes == [
        (f"sys/bus/pci/devices/{NVME}/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/nvme/unbind", NVME),
        ("sys/bus/pci/drivers_probe", NVME),
    ]
    restore(state_file, sysfs=fs)


def test_state_file_is_written_before_any_sysfs_write(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    seen: list[dict[str, object]] = []

    def first_write_fails(rel: str, value: str) -> None:
        if not seen:
            assert state_file.exists(), f"sysfs write to {rel} before the state file"
            seen.append(json.loads(state_file.read_text()))
            raise PermissionError(13, "Permission denied", rel)

    fs = KernelSysfs(tree, before_write=first_write_fails)
    with pytest.raises(PermissionError):
        bind_vfio([NVME], state_file=state_file, sysfs=fs)
    assert seen == [
        {
            "version": 1,
            "devices": [{"address": NVME, "original_driver": "nvme", "original_override": ""}],
        }
    ]
    # Nothing was changed, so the automatic restore had nothing to do and dropped the record.
    assert tree.driver_of(NVME) == "nvme" and tree.override_of(NVME) == ""
    assert not state_file.exists()
    assert not list(state_file.parent.glob(".*.tmp"))


def test_failure_mid_bind_restores_devices_already_bound(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    tree.add_device("0000:08:00.0", driver="ahci", group=30)

    def fail_second_device_probe(rel: str, value: str) -> None:
        if rel == "sys/bus/pci/drivers_probe" and value == "0000:08:00.0":
            raise OSError(22, "Invalid argument", rel)

    fs = KernelSysfs(tree, before_write=fail_second_device_probe)
    with pytest.raises(OSError, match="Invalid argument"):
        bind_vfio([NVME, "08:00.0"], state_file=state_file, sysfs=fs)
    assert tree.driver_of(NVME) == "nvme" and tree.override_of(NVME) == ""
    assert tree.driver_of("0000:08:00.0") == "ahci"
    assert tree.override_of("0000:08:00.0") == ""
    assert not state_file.exists()


def test_recover_stale_after_simulated_crash(
    tree: FakeSysfsTree, state_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs = KernelSysfs(tree)
    bindings = bind_vfio([NVME, NIC, NIC_FN1], state_file=state_file, sysfs=fs)
    assert all(tree.driver_of(a) == "vfio-pci" for a in (NVME, NIC, NIC_FN1))
    del bindings, fs  # the run dies; only the kernel's state and the state file remain

    caplog.set_level(logging.WARNING, logger="vmlab.vfio")
    recovered = recover_stale(state_file, sysfs=KernelSysfs(tree))
    assert {b.address for b in recovered} == {NVME, NIC, NIC_FN1}
    assert tree.driver_of(NVME) == "nvme"
    assert tree.driver_of(NIC) == "igb" and tree.driver_of(NIC_FN1) == "igb"
    assert all(tree.override_of(a) == "" for a in (NVME, NIC, NIC_FN1))
    assert not state_file.exists()
    assert "did not finish" in caplog.text and f"recovered {NVME}: back on nvme" in caplog.text
    # Nothing stale any more: a second call does nothing.
    assert recover_stale(state_file, sysfs=KernelSysfs(tree)) == []


def test_restore_when_original_driver_was_none(tree: FakeSysfsTree, state_file: Path) -> None:
    tree.add_device("0000:0a:00.0", driver=None, default_driver="nvme", group=31)
    fs = KernelSysfs(tree)
    (binding,) = bind_vfio(["0a:00.0"], state_file=state_file, sysfs=fs)
    assert binding.original_driver is None
    assert tree.driver_of("0000:0a:00.0") == "vfio-pci"
    assert ("sys/bus/pci/drivers/None/unbind", "0000:0a:00.0") not in fs.writes
    restore(state_file, sysfs=fs)
    # Left unbound, as it was: not probed onto nvme, whose ids would match.
    assert tree.driver_of("0000:0a:00.0") is None
    assert tree.override_of("0000:0a:00.0") == ""
    assert not state_file.exists()


def test_already_bound_device_is_left_alone(tree: FakeSysfsTree, state_file: Path) -> None:
    tree.add_device("0000:07:00.0", driver="vfio-pci", default_driver="nvme", group=22)
    fs = KernelSysfs(tree)
    with vfio_bound(["07:00.0", NVME], state_file=state_file, sysfs=fs) as bindings:
        assert [(b.address, b.bound_by_vmlab) for b in bindings] == [
            ("0000:07:00.0", False),
            (NVME, True),
        ]
        recorded = json.loads(state_file.read_text())["devices"]
        assert [d["address"] for d in recorded] == [NVME]
    assert tree.driver_of("0000:07:00.0") == "vfio-pci"
    assert tree.driver_of(NVME) == "nvme"
    assert not any("0000:07:00.0" in v for _, v in fs.writes)
    # Only already-bound devices: no state file, nothing to restore.
    with vfio_bound(["07:00.0"], state_file=state_file, sysfs=fs):
        assert not state_file.exists()
    assert tree.driver_of("0000:07:00.0") == "vfio-pci"


def test_context_manager_restores_on_keyboard_interrupt(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        vfio_bound([NVME], state_file=state_file, sysfs=KernelSysfs(tree)),
    ):
        assert tree.driver_of(NVME) == "vfio-pci"
        raise KeyboardInterrupt
    assert tree.driver_of(NVME) == "nvme"
    assert not state_file.exists()


def test_bind_refuses_unviable_group_without_touching_anything(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    fs = KernelSysfs(tree)
    with pytest.raises(HostError, match="group-unviable"):
        bind_vfio([NIC], state_file=state_file, sysfs=fs)
    assert fs.writes == [] and not state_file.exists()


def test_bind_refuses_when_stale_state_exists(tree: FakeSysfsTree, state_file: Path) -> None:
    bind_vfio([NVME], state_file=state_file, sysfs=KernelSysfs(tree))
    with pytest.raises(HostError, match="earlier run"):
        bind_vfio([NVME], state_file=state_file, sysfs=KernelSysfs(tree))
    restore(state_file, sysfs=KernelSysfs(tree))


def test_restore_keeps_state_file_when_a_device_fails(
    tree: FakeSysfsTree, state_file: Path
) -> None:
    fs = KernelSysfs(tree)
    bind_vfio([NVME, NIC, NIC_FN1], state_file=state_file, sysfs=fs)

    def igb_bind_fails(rel: str, value: str) -> None:
        if rel == "sys/bus/pci/drivers/igb/bind" and value == NIC:
            raise OSError(16, "Device or resource busy", rel)

    with pytest.raises(HostError, match=NIC) as exc:
        restore(state_file, sysfs=KernelSysfs(tree, before_write=igb_bind_fails))
    assert exc.value.hint is not None and str(state_file) in exc.value.hint
    assert state_file.exists()
    # The others were restored anyway; a retry finishes the job.
    assert tree.driver_of(NVME) == "nvme" and tree.driver_of(NIC_FN1) == "igb"
    assert tree.driver_of(NIC) is None
    restore(state_file, sysfs=KernelSysfs(tree))
    assert tree.driver_of(NIC) == "igb"
    assert not state_file.exists()


def test_corrupt_state_file_is_a_host_error(tree: FakeSysfsTree, state_file: Path) -> None:
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{not json")
    with pytest.raises(HostError, match="unreadable") as exc:
        recover_stale(state_file, sysfs=KernelSysfs(tree))
    assert exc.value.hint is not None and "delete the file" in exc.value.hint
    assert state_file.exists()


# ---- the real host, read-only


class _ReadOnlySysfs(Sysfs):
    def write(self, rel: str, value: str) -> None:
        raise AssertionError(f"preflight wrote {value!r} to {rel}")


def test_real_host_preflight_is_read_only_and_matches_the_kernel() -> None:
    real = Path("/sys/bus/pci/devices")
    devices = sorted(os.listdir(real)) if real.is_dir() else []
    if not devices:
        pytest.skip("no PCI devices under /sys/bus/pci/devices (a container without /sys?)")
    address = devices[0]
    report = check_passthrough([address], sysfs=_ReadOnlySysfs(Path("/")))
    (dev,) = report.devices
    assert dev.found and dev.address == address
    assert dev.vendor_id == Path(real, address, "vendor").read_text().strip().removeprefix("0x")
    groups = Path("/sys/kernel/iommu_groups")
    if groups.is_dir() and os.listdir(groups):
        # A host with an IOMMU: the group must be the kernel's.
        link = Path(real, address, "iommu_group")
        if link.is_symlink():
            assert dev.iommu_group == int(os.readlink(link).rsplit("/", 1)[-1])
        assert ProblemCode.IOMMU_OFF not in codes(dev.problems) or not link.is_symlink()
    else:
        # This lab host (and any without an IOMMU): reported, with a hint to act on.
        assert dev.iommu_group is None
        assert ProblemCode.IOMMU_OFF in codes(dev.problems)
        assert not report.ok
