"""QEMU itself accepts every rendered argv: each golden case is launched paused (-S) against
real files, a real loop block device and real qemu-storage-daemon sidecars, then inspected
over QMP: the devices sit at the PCI slots vmlab gave them and pinning took effect."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from vmlab.guest.image import GuestImage
from vmlab.launch.pinning import apply_pinning, wanted_pinning
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.plan import Case, plan
from vmlab.render.model import BootImage, DiskSource, GuestRuntime, pci_slot
from vmlab.render.qemu import render_qemu
from vmlab.results.rundir import CaseDir
from vmlab.spec import BlockBackend, FileBackend, RbdBackend, default_lab, load_spec
from vmlab.storage.backing import RunBacking, disk_source
from vmlab.storage.qsd import qsd_export

pytestmark = [pytest.mark.integration, pytest.mark.root]
SPECS = Path(__file__).parent.parent / "data" / "specs"
HUGEPAGES = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def _cases() -> list[Case]:
    specs = [default_lab(), *(load_spec(p) for p in sorted(SPECS.glob("*.yaml")))]
    return [
        c
        for s in specs
        for c in plan(s)
        if all(d.served_by in ("qemu", "qsd") for d in c.variant.guest.disks)
        and not c.variant.guest.hostdevs  # no IOMMU here: rendered and golden-tested only
        # a named cluster that is not here; RBD boots for real in test_rbd and test_libvirt
        and not any(isinstance(d.backend, RbdBackend) for d in c.variant.guest.disks)
    ]


@pytest.fixture(scope="module")
def loop_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a loop block device needs root")
    backing = tmp_path_factory.mktemp("loop") / "block.img"
    backing.write_bytes(b"\0" * (64 << 20))
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture(scope="module")
def hugepages() -> Iterator[None]:
    """Reserve 2 MiB pages for the hugepage cases, and give them back afterwards."""
    before = int(HUGEPAGES.read_text())
    HUGEPAGES.write_text(str(before + 512))
    try:
        if int(HUGEPAGES.read_text()) < before + 512:
            pytest.skip("the kernel could not reserve 512 hugepages")
        yield
    finally:
        HUGEPAGES.write_text(str(before))


def _sources(
    case: Case, tmp: Path, loop: Path, stack: ExitStack, case_dir: CaseDir, deadlines: Deadlines
) -> dict[str, DiskSource]:
    scratch = RunBacking(tmp / "scratch")
    sources = {}
    for disk in case.variant.guest.disks:
        backend = disk.backend
        if isinstance(backend, BlockBackend):
            source = DiskSource(path=loop, protocol="host_device")
        else:
            assert isinstance(backend, FileBackend)
            if backend.path is not None:  # the spec's own path does not exist here
                backend = backend.model_copy(update={"path": None, "size": "64M"})
            source = disk_source(scratch, case, disk.model_copy(update={"backend": backend}))
        if disk.served_by == "qsd":
            source = stack.enter_context(
                qsd_export(
                    "qemu-storage-daemon", disk, source, case_dir=case_dir, deadlines=deadlines
                )
            )
        sources[disk.name] = source
    return sources


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_qemu_accepts_the_rendered_argv(
    case: Case, guest_image: GuestImage, loop_device: Path, hugepages: None, tmp_path: Path
) -> None:
    deadlines = Deadlines(qmp_s=20, boot_s=0, banner_s=0, login_s=0, powerdown_s=0.2)
    case_dir = CaseDir(path=tmp_path / "case", case_id=case.id)
    guest_dir = new_guest_dir(tmp_path / "rt")
    with ExitStack() as stack:
        sources = _sources(case, tmp_path, loop_device, stack, case_dir, deadlines)
        runtime = GuestRuntime(
            qmp_socket=guest_dir / "qmp.sock",
            serial_log=tmp_path / "serial.log",
            pidfile=guest_dir / "qemu.pid",
            ssh_port=0,
        )
        boot = BootImage(guest_image.kernel, guest_image.initrd, guest_image.cmdline)
        argv = render_qemu(
            case, qemu="qemu-system-x86_64", accel="tcg", boot=boot, disks=sources, runtime=runtime
        ).argv
        argv = [a.replace("hostfwd=tcp:127.0.0.1:0-:22", "restrict=on") for a in argv]
        with QemuProcess(
            [*argv, "-S"],
            guest_dir=guest_dir,
            qmp_socket=runtime.qmp_socket,
            serial_log=runtime.serial_log,
            qemu_log=tmp_path / "qemu.log",
            deadlines=deadlines,
        ) as vm:
            assert vm.qmp is not None
            assert vm.qmp.cmd("query-status")["status"] == "prelaunch"
            devices = {
                d["qdev_id"]: d["slot"] for bus in vm.qmp.cmd("query-pci") for d in bus["devices"]
            }
            for index, disk in enumerate(case.variant.guest.disks):
                qdev = f"scsi-{disk.name}" if disk.model == "virtio-scsi" else f"dev-{disk.name}"
                assert devices[qdev] == int(pci_slot(index), 16), qdev
            applied = apply_pinning(vm.qmp, case.variant.guest)
            vcpus, iothreads = wanted_pinning(case.variant.guest)
            assert applied["vcpus"] == {str(k): v for k, v in vcpus.items()}
            assert applied["iothreads"] == iothreads
            for cpu in vm.qmp.cmd("query-cpus-fast"):
                if cpu["cpu-index"] in vcpus:
                    assert os.sched_getaffinity(cpu["thread-id"]) == {vcpus[cpu["cpu-index"]]}
