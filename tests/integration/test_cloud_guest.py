"""Bring your own guest, for real under TCG: the systemd + cloud-init rootfs booted as a cloud
image through a per-guest qcow2 overlay and a NoCloud seed; the minimal rootfs with its pinned
host key; a seed cloud-init rejects; a guest that never reaches SSH. Needs root (mmdebstrap)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab import paths
from vmlab.errors import GuestError, LaunchError
from vmlab.guest import cloudinit as ci
from vmlab.guest.cloud import image_info, make_overlay, sha256_file
from vmlab.guest.facts import collect_facts
from vmlab.guest.image import authkey_cmdline
from vmlab.guest.rootfs import ROOT_SERIAL, RootfsImage, build_rootfs
from vmlab.guest.ssh import GuestSSH, wait_banner
from vmlab.launch.direct import free_port
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir
from vmlab.plan import plan
from vmlab.render.model import BootImage, DiskSource, GuestRuntime, mac_address
from vmlab.render.qemu import render_qemu
from vmlab.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]
log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
CASE_ID = "cloudtest"
MAC = mac_address(CASE_ID)  # the management NIC's, as the QEMU template renders it
MARKER_TIMEOUT_S = 300.0  # systemd + cloud-init under TCG prints its marker after ~50 s
LOGIN_TIMEOUT_S = 120.0
CLOUD_INIT_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def cache_root() -> Iterator[Path]:
    """VMLAB_CACHE when set (reuses the default image and rootfs builds), else a temp dir."""
    if os.geteuid() != 0:
        pytest.skip("building a rootfs needs root (mmdebstrap --mode=root): run the tests as root")
    for tool, package in (
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        (QEMU, "qemu-system-x86"),
    ):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: apt-get install {package}")
    if os.environ.get("VMLAB_CACHE"):
        yield paths.cache_dir()
        return
    with tempfile.TemporaryDirectory(prefix="vmlab-rootfs-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def cloud_image(cache_root: Path) -> RootfsImage:
    return build_rootfs(cache_root, systemd=True, cloud_init=True)


@pytest.fixture(scope="module")
def minimal_image(cache_root: Path) -> RootfsImage:
    return build_rootfs(cache_root, systemd=False, cloud_init=False)


@dataclass
class ClientKey:
    pkey: paramiko.PKey
    public_line: str


@pytest.fixture(scope="module")
def client_key() -> ClientKey:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return ClientKey(paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public.decode())


@dataclass
class Booted:
    vm: QemuProcess
    name: str
    port: int
    serial: Path
    overlay: Path
    guest_dir: Path


@contextmanager
def boot(
    image: RootfsImage,
    workdir: Path,
    *,
    seed: Path | None,
    append: str = "",
    memory_mib: int = 1024,
    deadlines: Deadlines | None = None,
) -> Iterator[Booted]:
    """The rootfs base booted as a cloud image would be: a per-guest overlay as the boot disk,
    the seed (if any) as a read-only virtio-blk disk, a 64 MiB data disk with serial
    vmlab-data, user-mode networking with hostfwd to SSH, shut down through QMP; the argv is
    the one vmlab renders for such a guest."""
    (case,) = plan(
        parse_spec(
            {
                "name": "cloudtest",
                "guest": {
                    "memory_mib": memory_mib,
                    "cpus": 2,
                    "disks": [{"name": "data", "backend": {"type": "file", "size": "64M"}}],
                },
                "jobs": [{"name": "j", "rw": "randread"}],
            }
        )
    )
    case = replace(case, id=CASE_ID)
    overlay = make_overlay(image.base, workdir / "root.qcow2", base_format=image.base_format)
    data = workdir / "data.raw"
    with data.open("wb") as f:
        f.truncate(64 << 20)
    guest_dir = new_guest_dir()
    port = free_port()
    serial = workdir / "serial.log"
    boot_image = BootImage(
        image.kernel,
        image.initrd,
        f"{image.cmdline} {append}".strip(),
        root_disk=overlay,
        seed=seed,
    )
    runtime = GuestRuntime(
        qmp_socket=guest_dir / "qmp.sock",
        serial_log=serial,
        pidfile=guest_dir / "qemu.pid",
        ssh_port=port,
    )
    argv = render_qemu(
        case,
        qemu=QEMU,
        accel="tcg",
        boot=boot_image,
        disks={"data": DiskSource(path=data)},
        runtime=runtime,
    ).argv
    name = f"vmlab-{case.id}"
    try:
        with QemuProcess(
            argv,
            guest_dir=guest_dir,
            qmp_socket=guest_dir / "qmp.sock",
            serial_log=serial,
            qemu_log=workdir / "qemu.log",
            deadlines=deadlines or Deadlines.for_accel("tcg"),
        ) as vm:
            yield Booted(vm, name, port, serial, overlay, guest_dir)
    finally:
        shutil.rmtree(guest_dir, ignore_errors=True)


def seed_for(workdir: Path, key: ClientKey, **extra: object) -> tuple[Path, ci.SeedConfig]:
    config = ci.SeedConfig(
        instance_id=ci.new_instance_id(),
        authorized_keys=(key.public_line,),
        host_key=ci.generate_host_key(),
        network=ci.NetworkConfig(mac=MAC),
        extra=extra,
    )
    return ci.make_seed(config, workdir / "seed.iso"), config


def run_fio(ssh: GuestSSH, device: str) -> dict[str, float]:
    result = ssh.run(
        f"fio --name=smoke --filename={device} --rw=randrw --rwmixread=90 --bs=4k "
        "--ioengine=libaio --iodepth=4 --direct=1 --time_based --runtime=2 "
        "--output-format=json",
        timeout_s=180,
    )
    job = json.loads(result.text)["jobs"][0]
    return {"read_iops": job["read"]["iops"], "write_iops": job["write"]["iops"]}


def test_overlay_writes_never_reach_the_base(tmp_path: Path) -> None:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is missing: apt-get install qemu-utils")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    before = sha256_file(base)
    overlay = make_overlay(base, tmp_path / "guest" / "root.qcow2")
    info = image_info(overlay)
    assert (info.format, info.backing_file, info.virtual_size) == ("qcow2", str(base), 16 << 20)
    io_argv = ["qemu-io", "-f", "qcow2"]
    subprocess.run([*io_argv, "-c", "write -P 0xab 0 64k", str(overlay)], check=True, timeout=60)
    read = subprocess.run(
        [*io_argv, "-c", "read -P 0xab 0 64k", str(overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Pattern verification failed" not in read.stdout + read.stderr
    assert sha256_file(base) == before
    with pytest.raises(Exception, match="already exists"):
        make_overlay(base, overlay)
    bigger = make_overlay(base, tmp_path / "big.qcow2", size=32 << 20)
    assert image_info(bigger).virtual_size == 32 << 20


def test_cloud_image_boots_through_overlay_and_seed(
    cloud_image: RootfsImage,
    client_key: ClientKey,
    tmp_path: Path,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
) -> None:
    assert cloud_image.host_key is None  # the seed brings it
    base_sha = sha256_file(cloud_image.base)
    seed, config = seed_for(tmp_path, client_key)
    timings: dict[str, float] = {}
    with boot(cloud_image, tmp_path, seed=seed) as booted:
        vm = booted.vm
        timings["marker_s"] = vm.wait_serial(
            ci.CLOUD_READY_MARKER, failed=cloud_image.failed_marker, timeout_s=MARKER_TIMEOUT_S
        )
        wait_banner("127.0.0.1", booted.port, timeout_s=LOGIN_TIMEOUT_S)
        timings["banner_s"] = time.monotonic() - vm.started_at

        def connect(timeout_s: float) -> GuestSSH:
            return GuestSSH.connect(
                "127.0.0.1",
                booted.port,
                user="root",
                key=client_key.pkey,
                host_key=ci.pinned_host_key(config),
                timeout_s=timeout_s,
            )

        with connect(LOGIN_TIMEOUT_S) as ssh:
            timings["ssh_s"] = time.monotonic() - vm.started_at
            ci.check_instance_id(ssh, config.instance_id)
            status = ci.wait_cloud_init(
                ssh, timeout_s=CLOUD_INIT_TIMEOUT_S, reconnect=connect, console_log=booted.serial
            )
            timings["cloud_init_done_s"] = time.monotonic() - vm.started_at
            assert status["status"] == "done"
            assert "DataSourceNoCloud" in status["detail"]
            schema = ssh.run("cloud-init schema --system", timeout_s=120, check=False)
            assert "Valid cloud-config" in schema.text, schema.text + schema.stderr.decode()
            assert ssh.run("hostname", timeout_s=30).text.strip() == "vmlab"
            host_keys = ssh.run("ls /etc/ssh", timeout_s=30).text.split()
            assert sorted(k for k in host_keys if k.startswith("ssh_host_")) == [
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub",
            ]
            route = ssh.run("ip -4 route show default", timeout_s=30).text
            assert "via 10.0.2.2" in route

            facts = collect_facts(ssh)
            assert facts.distro.startswith("Debian GNU/Linux 12"), facts.raw
            assert facts.kernel == cloud_image.kernel_version
            assert facts.fio.startswith("fio-3")
            data = facts.by_serial("vmlab-data")
            root = facts.by_serial(ROOT_SERIAL)
            assert facts.by_serial(ci.SEED_SERIAL).device not in (data.device, root.device)
            assert data.queues == 2  # virtio-blk: one queue per vCPU by default
            metrics = run_fio(ssh, data.device)
            assert metrics["read_iops"] > 0
        timings["shutdown_start_s"] = time.monotonic() - vm.started_at
    assert vm.proc is not None and vm.proc.returncode is not None
    assert "reboot: Power down" in booted.serial.read_text(errors="replace")  # ACPI, not a kill
    assert qemu_pids(booted.name) == []
    assert not booted.guest_dir.exists()
    assert sha256_file(cloud_image.base) == base_sha  # the base is never written
    assert image_info(booted.overlay).backing_file == str(cloud_image.base)
    log.info("cloud guest timings (TCG): %s", timings)


def test_seed_that_cloud_init_rejects_fails_with_console_log(
    cloud_image: RootfsImage,
    client_key: ClientKey,
    tmp_path: Path,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
) -> None:
    # Schema-invalid: write_files must be a list. cloud-init 22.4 warns about the schema, then
    # its write-files module fails on it, and `cloud-init status` reports error.
    seed, config = seed_for(tmp_path, client_key, write_files=5)
    with boot(cloud_image, tmp_path, seed=seed) as booted:
        booted.vm.wait_serial(ci.CLOUD_READY_MARKER, timeout_s=MARKER_TIMEOUT_S)
        wait_banner("127.0.0.1", booted.port, timeout_s=LOGIN_TIMEOUT_S)
        with (
            GuestSSH.connect(
                "127.0.0.1",
                booted.port,
                user="root",
                key=client_key.pkey,
                host_key=ci.pinned_host_key(config),
                timeout_s=LOGIN_TIMEOUT_S,
            ) as ssh,
            pytest.raises(GuestError) as info,
        ):
            ci.wait_cloud_init(ssh, timeout_s=CLOUD_INIT_TIMEOUT_S, console_log=booted.serial)
    message = str(info.value)
    log.info("cloud-init failure as reported: %s (hint: %s)", message, info.value.hint)
    assert "status error" in message
    assert "write" in message  # the failing module is named
    assert info.value.hint is not None and str(booted.serial) in info.value.hint
    console = booted.serial.read_text(errors="replace")
    assert "Invalid cloud-config provided" in console  # the schema warning, on the console
    assert qemu_pids(booted.name) == []
    assert not booted.guest_dir.exists()


def test_guest_that_never_reaches_ssh_leaves_nothing(
    cloud_image: RootfsImage,
    client_key: ClientKey,
    tmp_path: Path,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
) -> None:
    seed, _config = seed_for(tmp_path, client_key)
    # A guest this early in its boot ignores the ACPI power button: do not wait 40 s for it.
    quick = replace(Deadlines.for_accel("tcg"), powerdown_s=2.0)
    with (
        pytest.raises(LaunchError, match="did not print"),
        boot(cloud_image, tmp_path, seed=seed, deadlines=quick) as booted,
    ):
        booted.vm.wait_serial(ci.CLOUD_READY_MARKER, timeout_s=2)
    with (
        pytest.raises(GuestError, match="no SSH banner"),
        boot(cloud_image, tmp_path / "again", seed=seed, deadlines=quick) as booted_again,
    ):
        wait_banner("127.0.0.1", booted_again.port, timeout_s=2)
    for guest in (booted, booted_again):
        assert qemu_pids(guest.name) == []
        assert not guest.guest_dir.exists()
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []


def test_minimal_rootfs_boots_with_its_pinned_host_key(
    minimal_image: RootfsImage,
    client_key: ClientKey,
    tmp_path: Path,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
) -> None:
    assert minimal_image.host_key is not None and minimal_image.ready_marker is not None
    base_sha = sha256_file(minimal_image.base)
    append = authkey_cmdline(client_key.public_line)
    with boot(minimal_image, tmp_path, seed=None, append=append, memory_mib=512) as booted:
        marker_s = booted.vm.wait_serial(
            minimal_image.ready_marker, failed=minimal_image.failed_marker, timeout_s=120
        )
        wait_banner("127.0.0.1", booted.port, timeout_s=60)
        with GuestSSH.connect(
            "127.0.0.1",
            booted.port,
            user=minimal_image.user,
            key=client_key.pkey,
            host_key=minimal_image.host_key,
            timeout_s=60,
        ) as ssh:
            ssh_s = time.monotonic() - booted.vm.started_at
            facts = collect_facts(ssh)
            assert facts.distro.startswith("Debian GNU/Linux 12"), facts.raw
            assert run_fio(ssh, facts.by_serial("vmlab-data").device)["read_iops"] > 0
    console = booted.serial.read_text(errors="replace")
    assert "power button: powering off" in console  # QMP system_powerdown reached busybox acpid
    assert qemu_pids(booted.name) == []
    assert sha256_file(minimal_image.base) == base_sha
    log.info("minimal rootfs guest (TCG): marker %.1f s, SSH %.1f s", marker_s, ssh_s)
