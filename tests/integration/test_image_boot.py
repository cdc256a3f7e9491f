"""Build the default guest image and boot it under TCG: readiness marker, SSH with a pinned host
key, fio, disks, SFTP, ACPI power-down through QMP, and the failure marker."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab import paths
from vmlab.guest.image import GuestImage, authkey_cmdline, build_image, find_image

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
READY_TIMEOUT_S = 120.0
POWERDOWN_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def cache_root() -> Iterator[Path]:
    """VMLAB_CACHE when set (reuses downloads and images), else a private temp dir."""
    if os.environ.get("VMLAB_CACHE"):
        yield paths.cache_dir()
        return
    with tempfile.TemporaryDirectory(prefix="vmlab-image-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def image(cache_root: Path) -> GuestImage:
    for tool in ("apt-get", "dpkg", "ldd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: the default guest is built on a Debian 12 host")
    return build_image(cache_root)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmlab-boot-") as tmp:
        yield Path(tmp)


@dataclass
class ClientKey:
    pkey: paramiko.PKey
    public_line: str


@pytest.fixture(scope="session")
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Booted:
    proc: subprocess.Popen[bytes]
    serial: Path
    qmp: Path
    ssh_port: int


@contextmanager
def boot(
    image: GuestImage, workdir: Path, append: str, *, disks: bool = False, guest_ip: str = ""
) -> Iterator[Booted]:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} missing: apt-get install qemu-system-x86")
    port = _free_port()
    serial, qmp = workdir / "serial.log", workdir / "qmp.sock"
    argv = [
        QEMU, "-machine", "q35,accel=tcg", "-m", "512", "-smp", "2",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"{image.cmdline} {append}".strip(),
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{guest_ip}:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]  # fmt: skip
    if disks:
        for name in ("vblk", "nvme", "scsi"):
            disk = workdir / f"{name}.raw"
            with disk.open("wb") as f:
                f.truncate(16 << 20)
            argv += ["-drive", f"file={disk},if=none,id={name},format=raw,cache=unsafe"]
        argv += [
            "-device", "virtio-blk-pci,drive=vblk,serial=vmlab-vblk",
            "-device", "nvme,drive=nvme,serial=vmlab-nvme",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-device", "scsi-hd,drive=scsi,bus=scsi0.0,serial=vmlab-scsi",
        ]  # fmt: skip
    log = (workdir / "qemu.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield Booted(proc, serial, qmp, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


def wait_for_marker(booted: Booted, markers: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = booted.serial.read_text(errors="replace") if booted.serial.exists() else ""
        for marker in markers:
            if marker in text:
                return marker
        if booted.proc.poll() is not None:
            pytest.fail(f"QEMU exited with {booted.proc.returncode} before {markers}:\n{text}")
        time.sleep(0.2)
    pytest.fail(f"none of {markers} within {timeout_s} s:\n{booted.serial.read_text()}")


def ssh_connect(image: GuestImage, port: int, key: ClientKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key_type, blob = image.host_key.split()[:2]
    pinned = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, pinned)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1", port=port, username=image.user, pkey=key.pkey, look_for_keys=False,
        allow_agent=False, timeout=30, banner_timeout=60, auth_timeout=60,
    )  # fmt: skip
    return client


def run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=60)
    out = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


async def _qmp(socket_path: Path, command: str) -> None:
    from qemu.qmp import QMPClient

    qmp = QMPClient("vmlab-test")
    await qmp.connect(str(socket_path))
    try:
        await qmp.execute(command)
    finally:
        await qmp.disconnect()


def test_image_is_cached_and_found(image: GuestImage, cache_root: Path) -> None:
    assert build_image(cache_root) == image  # second call: from the cache
    assert find_image(cache_root) == image
    assert image.kernel.is_file() and image.initrd.is_file()
    assert image.host_key.startswith("ssh-ed25519 ")
    assert image.fio_version.startswith("fio-")


def test_boot_ssh_sftp_powerdown(image: GuestImage, workdir: Path, client_key: ClientKey) -> None:
    # the SCSI modules are an on-demand group: /init loads them when the command line asks
    append = f"{authkey_cmdline(client_key.public_line)} vmlab.modules=scsi"
    with boot(image, workdir, append, disks=True) as booted:
        marker = wait_for_marker(booted, (image.ready_marker, image.failed_marker), READY_TIMEOUT_S)
        assert marker == image.ready_marker, booted.serial.read_text()
        client = ssh_connect(image, booted.ssh_port, client_key)
        try:
            assert run(client, "fio --version").strip() == image.fio_version
            assert {"vda", "nvme0n1", "sda"} <= set(run(client, "ls /sys/block").split())
            assert run(client, "cat /sys/block/vda/serial").strip() == "vmlab-vblk"
            assert run(client, "hostname").strip() == "vmlab"
            payload = os.urandom(300_000)
            local_in, local_out = workdir / "up.bin", workdir / "down.bin"
            local_in.write_bytes(payload)
            with client.open_sftp() as sftp:
                sftp.put(str(local_in), "/tmp/up.bin")
                sftp.get("/tmp/up.bin", str(local_out))
            assert local_out.read_bytes() == payload
        finally:
            client.close()
        asyncio.run(_qmp(booted.qmp, "system_powerdown"))
        try:
            booted.proc.wait(timeout=POWERDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"guest ignored system_powerdown:\n{booted.serial.read_text()}")
        assert booted.proc.returncode == 0
        assert "power button: powering off" in booted.serial.read_text()


def test_missing_authkey_reports_failure(image: GuestImage, workdir: Path) -> None:
    with boot(image, workdir, "") as booted:
        marker = wait_for_marker(booted, (image.ready_marker, image.failed_marker), READY_TIMEOUT_S)
        assert marker == image.failed_marker
        assert "no vmlab.authkey" in booted.serial.read_text()
        booted.proc.wait(timeout=POWERDOWN_TIMEOUT_S)  # init powers the guest off


def test_address_from_the_kernel_command_line(
    image: GuestImage, workdir: Path, client_key: ClientKey
) -> None:
    append = f"{authkey_cmdline(client_key.public_line)} vmlab.ip=10.0.2.16/24 vmlab.gw=none"
    with boot(image, workdir, append, guest_ip="10.0.2.16") as booted:
        marker = wait_for_marker(booted, (image.ready_marker, image.failed_marker), READY_TIMEOUT_S)
        assert marker == image.ready_marker, booted.serial.read_text()
        client = ssh_connect(image, booted.ssh_port, client_key)
        try:
            assert "inet 10.0.2.16/24" in run(client, "ip -4 addr show dev eth0")
            assert "default" not in run(client, "ip route")
        finally:
            client.close()
