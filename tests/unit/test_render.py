"""Golden argv files for every rendered case; `pytest --regenerate-golden` rewrites them."""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from golden_cases import fixed_sources, golden_cases

from vmlab.fio.jobs import render_job
from vmlab.guest.boot import preview_boot
from vmlab.net.lab import LabNic
from vmlab.plan import Case, plan
from vmlab.qemuopts import qemu_quote
from vmlab.render.model import BootImage, GuestRuntime, NicPlan, mac_address
from vmlab.render.qemu import nic_plans, render_qemu
from vmlab.spec import default_lab
from vmlab.storage.backing import PreviewBacking, disk_source
from vmlab.storage.qsd import render_qsd

DATA = Path(__file__).parent.parent / "data"
GOLDEN = DATA / "golden" / "qemu"


def fixed_nics(case: Case) -> list[NicPlan]:
    """Lab NICs as the launcher renders them, with made-up fds (opened only at launch)."""
    nics = []
    for index, spec in enumerate(case.variant.guest.nics):
        nics.append(
            LabNic(
                guest=case.id,
                kind=spec.attach,
                netdev_id=f"lab-{spec.name}",
                ifname=f"vt{index}",
                netns="vmlab-test",
                mac=mac_address(spec.name),
                fds=tuple(range(100 + 10 * index, 100 + 10 * index + spec.queues)),
                address=IPv4Interface(f"10.9.0.{10 + index}/24"),
                gateway=IPv4Interface("10.9.0.1/24"),
                vhost=spec.vhost,
            )
        )
    return nic_plans(case.variant.guest, nics)


def fixed_render(case: Case, accel: str = "tcg") -> list[str]:
    disks = fixed_sources(case)
    runtime = GuestRuntime(
        qmp_socket=Path("/run/g/qmp.sock"),
        serial_log=Path("/r/serial.log"),
        pidfile=Path("/run/g/qemu.pid"),
        ssh_port=40022,
        nics=fixed_nics(case),
    )
    boot = preview_boot(
        case.variant.guest,
        BootImage(Path("/img/vmlinux"), Path("/img/initrd.img"), "console=ttyS0 vmlab.x=1"),
    )
    return render_qemu(
        case, qemu="qemu-system-x86_64", accel=accel, boot=boot, disks=disks, runtime=runtime
    ).argv


@pytest.mark.parametrize(("spec_name", "case"), golden_cases(), ids=lambda v: getattr(v, "id", v))
def test_argv_matches_golden(spec_name: str, case: Case, regenerate_golden: bool) -> None:
    golden = GOLDEN / spec_name / f"{case.id}.argv"
    text = "\n".join(fixed_render(case)) + "\n"
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --regenerate-golden"
    assert text == golden.read_text()


def test_every_golden_file_belongs_to_a_case() -> None:
    expected = {f"{name}/{case.id}.argv" for name, case in golden_cases()}
    present = {str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("*/*.argv")}
    assert present == expected


def test_commas_in_paths_are_doubled_and_tokens_are_whole() -> None:
    case = next(c for n, c in golden_cases() if n == "devices" and c.id.startswith("virtio-blk"))
    argv = fixed_render(case)
    (blockdev,) = [a for a in argv if "data,,1.raw" in a]
    assert blockdev.startswith("driver=file,node-name=file-data,filename=/srv/images/data,,1.raw,")
    assert all(a == a.strip() and a for a in argv)
    assert qemu_quote("a,b,,c") == "a,,b,,,,c"


def test_kvm_uses_host_cpu_and_tcg_uses_max() -> None:
    case = plan(default_lab())[0]
    assert fixed_render(case, "kvm")[fixed_render(case, "kvm").index("-cpu") + 1] == "host"
    assert fixed_render(case, "tcg")[fixed_render(case, "tcg").index("-cpu") + 1] == "max"
    assert "q35,accel=kvm" in fixed_render(case, "kvm")


def test_cache_modes_map_to_blockdev_and_device_flags() -> None:
    by_id = {c.id: fixed_render(c) for n, c in golden_cases() if n == "devices"}
    wb = by_id["virtio-blk_writeback"]
    assert any("cache.direct=off,cache.no-flush=off" in a for a in wb if "file-data" in a)
    assert any(a.startswith("virtio-blk-pci,id=dev-data") and "write-cache=on" in a for a in wb)
    aux = [a for a in wb if "aux" in a]
    assert any("write-cache=off" in a for a in aux)  # directsync
    assert any(
        "iothread=iot-disk-aux" in a and "num-queues=2" in a and "queue-size=128" in a for a in aux
    )
    assert "throttle-group,id=tg-aux,x-iops-total=500,x-bps-total=10485760" in aux
    assert any(a.startswith("virtio-blk-pci") and "drive=disk-aux" in a for a in aux)


def test_fio_job_file() -> None:
    case = plan(default_lab())[0]
    text = render_job(case.jobs[1], filename="/dev/vdb", case_id=case.id)
    lines = text.splitlines()
    for expected in (
        "[throughput]",
        "filename=/dev/vdb",
        "rw=randrw",
        "rwmixread=90",
        "bs=4k",
        "iodepth=64",
        "direct=1",
        "time_based=1",
        "runtime=10",
        "ioengine=libaio",
    ):
        assert expected in lines


QSD_GOLDEN = DATA / "golden" / "qsd"


def _qsd_disks() -> list[tuple[str, Case, str]]:
    return [
        (name, case, d.name)
        for name, case in golden_cases()
        for d in case.variant.guest.disks
        if d.served_by == "qsd"
    ]


@pytest.mark.parametrize(
    ("spec_name", "case", "disk"), _qsd_disks(), ids=lambda v: getattr(v, "id", v)
)
def test_qemu_storage_daemon_argv_matches_golden(
    spec_name: str, case: Case, disk: str, regenerate_golden: bool
) -> None:
    (spec_disk,) = [d for d in case.variant.guest.disks if d.name == disk]
    source = disk_source(PreviewBacking(Path("/scratch")), case, spec_disk)
    argv = render_qsd(
        "qemu-storage-daemon",
        spec_disk,
        source,
        socket=Path("/run/q/vu.sock"),
        qmp_socket=Path("/run/q/qmp.sock"),
        pidfile=Path("/run/q/qemu.pid"),
    )
    golden = QSD_GOLDEN / spec_name / f"{case.id}.{disk}.argv"
    text = "\n".join(argv) + "\n"
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    assert "--export" in argv and any(f"num-queues={spec_disk.num_queues or 1}" in a for a in argv)
