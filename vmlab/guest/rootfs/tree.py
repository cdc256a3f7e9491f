"""The rootfs guests' root file system tree: mmdebstrap, then what vmlab adds to it.

``mmdebstrap --mode=root --variant=minbase`` (as root) with the variant's packages
(:func:`rootfs_packages`), from the mirror the host's apt uses (:func:`host_sources`); docs,
man pages and locales excluded. Then :func:`customize`: the default image's kernel modules
(+ depmod), hostname, hosts, fstab (``LABEL=vmlab-root``), resolv.conf, and per variant:

* ``minimal``: an sshd host key pinned at build time and a tiny ``/sbin/init``
  (templates/cloudinit/rootfs-init.sh.j2) with busybox acpid for the power button;
* ``systemd``: the same host key, units for root's key from ``vmlab.authkey=``, the ready
  marker and a static systemd-networkd config, and the units that cost seconds masked;
* ``cloud``: nothing vmlab-specific but a NoCloud-only datasource list; the seed
  (:mod:`vmlab.guest.cloudinit`) brings key, host key, network and hostname.

A killed mmdebstrap can leave proc, sys and dev mounted in its chroot: :func:`unmount_under`
lazily unmounts them before a build directory is removed, so removing it cannot reach the host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from vmlab import proc, resources
from vmlab.guest.cloudinit import generate_host_key
from vmlab.guest.image.cache import ProgressFn, note
from vmlab.guest.image.recipe import DEFAULT_GW, DEFAULT_IP, FAILED_MARKER, HOSTNAME, READY_MARKER
from vmlab.render import environment

log = logging.getLogger(__name__)

SUITE = "bookworm"
ROOT_LABEL = "vmlab-root"
BASE_PACKAGES = ("openssh-server", "fio", "iproute2", "busybox")
SYSTEMD_PACKAGES = ("systemd-sysv", "udev", "dbus", "kmod")
CLOUD_INIT_PACKAGES = ("cloud-init",)
# Loaded by the minimal variant's init (udev does it under systemd).
GUEST_MODULES = (
    "virtio_net",
    "virtio_rng",
    "virtio_scsi",
    "sd_mod",
    "button",
    "evdev",
    "isofs",
)
# Units nobody needs in a benchmark guest, and that cost seconds under TCG.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "systemd-timesyncd.service",
)
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
INIT_TEMPLATE = "cloudinit/rootfs-init.sh.j2"
POWEROFF_SCRIPT = "cloudinit/rootfs-poweroff.sh"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"


def rootfs_packages(variant: str) -> tuple[str, ...]:
    packages: list[str] = list(BASE_PACKAGES)
    if variant in ("systemd", "cloud"):
        packages += SYSTEMD_PACKAGES
    if variant == "cloud":
        packages += CLOUD_INIT_PACKAGES
    return tuple(packages)


def host_sources() -> tuple[str, str]:
    """(path, text) of the apt sources mmdebstrap should use: the host's Debian sources, so the
    rootfs comes from the same mirror the host's apt uses; ('', '') means mmdebstrap's default."""
    for candidate in (
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
    ):
        try:
            text = candidate.read_text()
        except OSError:
            continue
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if lines:
            return str(candidate), text
    return "", ""


def render_rootfs_init() -> str:
    template = environment().get_template(INIT_TEMPLATE)
    return template.render(
        ready_marker=READY_MARKER,
        failed_marker=FAILED_MARKER,
        default_ip=DEFAULT_IP,
        default_gw=DEFAULT_GW,
        modules=GUEST_MODULES,
    )


# Files of the "systemd" variant (no cloud-init): the key, the network, the marker.
AUTHKEY_SCRIPT = """#!/bin/sh
# vmlab: root's authorized keys from vmlab.authkey=TYPE:BASE64 on the kernel command line.
set -f
umask 077
mkdir -p /root/.ssh
: > /root/.ssh/authorized_keys
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmlab.authkey=*:*)
            key="${arg#vmlab.authkey=}"
            echo "${key%%:*} ${key#*:}" >> /root/.ssh/authorized_keys
            ;;
    esac
done
"""
AUTHKEY_UNIT = """[Unit]
Description=vmlab: root's SSH key from the kernel command line
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/sbin/vmlab-authkey

[Install]
WantedBy=multi-user.target
"""
READY_UNIT = f"""[Unit]
Description=vmlab: readiness marker on the serial port once sshd is up
After=ssh.service
Wants=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo {READY_MARKER} > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
"""
NETWORKD_CONFIG = f"""# vmlab: QEMU user-mode networking on the first ethernet NIC.
[Match]
Type=ether
Kind=!*

[Network]
Address={DEFAULT_IP}
Gateway={DEFAULT_GW}
LinkLocalAddressing=no
IPv6AcceptRA=no
"""
CLOUD_CFG = """# vmlab: only look for a NoCloud seed (a disk labelled cidata); probing the other
# clouds' metadata services costs seconds under TCG and finds nothing.
datasource_list: [NoCloud, None]
"""
SSHD_CONFIG = f"""# vmlab: keys only, and the host key pinned at build time.
HostKey {HOST_KEY_PATH}
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""


def files_sha256() -> str:
    """One hash of the files above (an input of the rootfs cache key)."""
    files = (AUTHKEY_SCRIPT, AUTHKEY_UNIT, READY_UNIT, NETWORKD_CONFIG, CLOUD_CFG, SSHD_CONFIG)
    return hashlib.sha256("\0".join(files).encode()).hexdigest()


def tree_bytes(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            try:
                total += Path(dirpath, name).lstat().st_blocks * 512
            except OSError:
                continue
    return total


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    root = path.resolve()
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(fields[4].replace("\\040", " "))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever a killed mmdebstrap left mounted in its chroot (proc, sys, dev
    nodes bound from the host), so removing the build directory cannot reach the host."""
    for point in mounts_under(path):
        log.warning("unmounting %s left behind by an interrupted build", point)
        proc.run(["umount", "--lazy", point], timeout_s=60, check=False)


def mmdebstrap(
    tree: Path, packages: Sequence[str], sources_path: str, progress: ProgressFn | None
) -> None:
    note(progress, f"mmdebstrap {SUITE}: minbase + {', '.join(packages)}")
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        SUITE,
        str(tree),
    ]
    if sources_path:
        argv.append(sources_path)
    try:
        proc.run(
            argv,
            timeout_s=1800,
            hint="mmdebstrap needs the Debian mirror the host's apt uses; run it to see why",
        )
    finally:
        unmount_under(tree)


def customize(tree: Path, *, variant: str, kernel_tree: Path, kernel_version: str) -> str | None:
    """Everything vmlab adds to the mmdebstrap tree; returns the pinned host key (or None)."""
    # Kernel modules of the default image's kernel (+ depmod, so modprobe and udev find them).
    moddir = tree / "usr/lib/modules" / kernel_version
    if moddir.exists():
        shutil.rmtree(moddir)
    shutil.copytree(kernel_tree / "lib/modules" / kernel_version, moddir, symlinks=True)
    proc.run(
        ["depmod", "-b", tree, kernel_version], timeout_s=300, missing_hint="apt-get install kmod"
    )

    _write(tree / "etc/hostname", f"{HOSTNAME}\n")
    _write(tree / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost\n")
    _write(tree / "etc/fstab", f"LABEL={ROOT_LABEL}\t/\text4\trw,errors=remount-ro\t0\t0\n")
    _write(tree / "etc/resolv.conf", "nameserver 10.0.2.3\n")  # QEMU user-mode DNS
    for old in (tree / "etc/ssh").glob("ssh_host_*"):
        old.unlink()  # made by openssh-server's postinst: every guest would share them

    host_key: str | None = None
    if variant != "cloud":
        key = generate_host_key()
        _write(tree / HOST_KEY_PATH.lstrip("/"), key.private_openssh, 0o600)
        _write(tree / (HOST_KEY_PATH.lstrip("/") + ".pub"), key.public_line + " vmlab\n")
        _write(tree / "etc/ssh/sshd_config.d/vmlab.conf", SSHD_CONFIG)
        host_key = key.public_line

    if variant == "minimal":
        templates = resources.templates_dir()
        _write(tree / "usr/sbin/vmlab-init", render_rootfs_init(), 0o755)
        init = tree / "usr/sbin/init"
        if init.exists() or init.is_symlink():
            init.unlink()
        init.symlink_to("vmlab-init")
        poweroff = (templates / POWEROFF_SCRIPT).read_text()
        _write(tree / "etc/acpi/PWRF/00000080", poweroff, 0o755)
        return host_key

    # systemd variants
    systemctl = ["chroot", str(tree), "systemctl"]
    proc.run([*systemctl, "mask", *MASKED_UNITS], timeout_s=120)
    proc.run([*systemctl, "enable", "systemd-networkd.service"], timeout_s=120)
    if variant == "systemd":
        _write(tree / "usr/sbin/vmlab-authkey", AUTHKEY_SCRIPT, 0o755)
        _write(tree / "etc/systemd/system/vmlab-authkey.service", AUTHKEY_UNIT)
        _write(tree / "etc/systemd/system/vmlab-ready.service", READY_UNIT)
        _write(tree / "etc/systemd/network/10-vmlab.network", NETWORKD_CONFIG)
        proc.run(
            [*systemctl, "enable", "vmlab-authkey.service", "vmlab-ready.service"], timeout_s=120
        )
    else:
        _write(tree / "etc/cloud/cloud.cfg.d/90-vmlab.cfg", CLOUD_CFG)
    return host_key
