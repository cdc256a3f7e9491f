"""Build a Debian 12 root-file-system guest: ``vmlab image build --kind rootfs``.

Three variants of one recipe:

* ``minimal`` (no systemd): minbase + openssh-server, fio, iproute2, busybox; a tiny
  ``/sbin/init`` (templates/cloudinit/rootfs-init.sh.j2) does what the default guest's init does:
  root's key from ``vmlab.authkey=``, sshd with a host key pinned at build time, ``VMLAB-READY``
  on ttyS0, busybox acpid for the power button;
* ``systemd``: the same plus systemd-sysv, udev, dbus (for logind: power button) and kmod, with
  small units for the key, a static systemd-networkd config and the ready marker;
* ``cloud``: systemd + cloud-init, nothing vmlab-specific inside: user, keys, host key, network
  and hostname come from a NoCloud seed (:mod:`vmlab.guest.cloudinit`), as on a cloud image.

The tree is made by ``mmdebstrap`` (as root), gets the default image's kernel modules, and is
packed with ``mkfs.ext4 -d`` (no loop mount) into a raw file that ``qemu-img convert`` turns into
an uncompressed qcow2 *base*. Guests boot per-guest overlays of it (:func:`vmlab.guest.cloud.
make_overlay`) with the default image's kernel and a tiny initramfs (busybox-static + the
virtio modules, which Debian's cloud kernel builds as modules; ext4 is built in) that mounts
``root=LABEL=vmlab-root`` and ``switch_root``s into it.

Images live in ``<cache>/rootfs/<key>/``; the key hashes what went in (the exact kernel and
busybox-static packages of the default image; the candidate versions of the requested packages;
the apt sources; the templates; :data:`FORMAT_VERSION`). A build happens in a temporary
directory renamed into place under a per-key lock, like :mod:`vmlab.guest.image`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vmlab import paths, proc, resources
from vmlab.errors import HostError
from vmlab.guest.cloudinit import generate_host_key
from vmlab.guest.cpio import NewcWriter
from vmlab.guest.image import (
    BASE_CMDLINE,
    BZIMAGE,
    DEFAULT_GW,
    DEFAULT_IP,
    FAILED_MARKER,
    HOSTNAME,
    READY_MARKER,
    GuestImage,
    build_image,
    compute_key,
    resolve_modules,
)
from vmlab.guest.image.build import IMAGES
from vmlab.guest.image.cache import install as _install
from vmlab.guest.image.cache import kind_dir
from vmlab.guest.image.cache import locked as _locked
from vmlab.guest.image.debs import apt_show as _apt_show
from vmlab.guest.image.initramfs import usrmerge as _usrmerge

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUITE = "bookworm"
ROOT_LABEL = "vmlab-root"
ROOT_SERIAL = "vmlab-root"  # virtio serial of the boot disk
USER = "root"
ROOTWAIT_S = 30
LOCK_TIMEOUT_S = 1800.0
MIB = 1 << 20
FREE_SPACE_BYTES = 1 << 30  # room in the base for packages a seed installs
BASE_PACKAGES = ("openssh-server", "fio", "iproute2", "busybox")
SYSTEMD_PACKAGES = ("systemd-sysv", "udev", "dbus", "kmod")
CLOUD_INIT_PACKAGES = ("cloud-init",)
INITRD_MODULES = ("virtio_pci", "virtio_blk")
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
INITRD_TEMPLATE = "cloudinit/rootfs-initrd.sh.j2"
INIT_TEMPLATE = "cloudinit/rootfs-init.sh.j2"
POWEROFF_SCRIPT = "cloudinit/rootfs-poweroff.sh"
MIN_MEMORY_MIB = {"minimal": 256, "systemd": 512, "cloud": 768}
COMPLETE_PATH = "/etc/vmlab/complete"
MODULES_PATH = "/etc/vmlab/modules"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"

ProgressFn = Callable[[str], None]


def _note(progress: ProgressFn | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)


@dataclass(frozen=True)
class RootfsImage:
    root: Path  # the image dir
    key: str
    variant: str  # minimal | systemd | cloud
    base: Path  # the qcow2 base: never written, guests boot overlays of it
    base_format: str
    kernel: Path
    bzimage: Path  # the same kernel as a bzImage, in the default image it came from
    initrd: Path
    cmdline: str  # base kernel cmdline (root=...), without vmlab.authkey
    ready_marker: str | None  # None for the cloud variant: the seed's bootcmd prints one
    failed_marker: str
    host_key: str | None  # pinned public host key; None: the seed carries it (cloud)
    user: str
    kernel_version: str
    min_memory_mib: int
    extra_packages: tuple[str, ...] = ()  # beyond the variant's own (e.g. QEMU for nested)


def variant_name(*, systemd: bool, cloud_init: bool) -> str:
    if cloud_init and not systemd:
        raise HostError(
            "a rootfs with cloud-init needs systemd (cloud-init runs as systemd units)",
            hint="build with --systemd, or without --cloud-init",
        )
    return "cloud" if cloud_init else "systemd" if systemd else "minimal"


def rootfs_packages(variant: str) -> tuple[str, ...]:
    packages: list[str] = list(BASE_PACKAGES)
    if variant in ("systemd", "cloud"):
        packages += SYSTEMD_PACKAGES
    if variant == "cloud":
        packages += CLOUD_INIT_PACKAGES
    return tuple(packages)


# --- templates -------------------------------------------------------------------------------


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(resources.templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders shell scripts
    )


def render_initrd_init() -> str:
    return (
        _env()
        .get_template(INITRD_TEMPLATE)
        .render(
            root_label=ROOT_LABEL,
            rootwait_s=ROOTWAIT_S,
            failed_marker=FAILED_MARKER,
            complete_path=COMPLETE_PATH,
            modules_path=MODULES_PATH,
        )
    )


def render_rootfs_init() -> str:
    return (
        _env()
        .get_template(INIT_TEMPLATE)
        .render(
            ready_marker=READY_MARKER,
            failed_marker=FAILED_MARKER,
            default_ip=DEFAULT_IP,
            default_gw=DEFAULT_GW,
            modules=GUEST_MODULES,
        )
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


# --- cache -----------------------------------------------------------------------------------


def _rootfs_dir(cache_root: Path | None) -> Path:
    return (cache_root if cache_root is not None else paths.cache_dir()) / "rootfs"


def _load(root: Path) -> RootfsImage | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != root.name:
            return None
        image = RootfsImage(
            root=root,
            key=manifest["key"],
            variant=manifest["variant"],
            base=root / manifest["base"],
            base_format=manifest["base_format"],
            kernel=root / manifest["kernel"],
            bzimage=kind_dir(root.parent.parent, IMAGES) / manifest["default_image"] / BZIMAGE,
            initrd=root / manifest["initrd"],
            cmdline=manifest["cmdline"],
            ready_marker=manifest["ready_marker"],
            failed_marker=manifest["failed_marker"],
            host_key=manifest["host_key"],
            user=manifest["user"],
            kernel_version=manifest["kernel_version"],
            min_memory_mib=int(manifest["min_memory_mib"]),
            extra_packages=tuple(manifest.get("extra_packages", ())),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sizes = manifest.get("sizes", {})
    for path, size_key in (
        (image.base, "base_bytes"),
        (image.kernel, "kernel_bytes"),
        (image.initrd, "initrd_bytes"),
    ):
        if not path.is_file() or path.stat().st_size != sizes.get(size_key):
            return None
    return image


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


def key_material(
    image: GuestImage,
    variant: str,
    versions: Mapping[str, str],
    sources: str,
    extra_packages: Sequence[str] = (),
) -> dict[str, Any]:
    templates = resources.templates_dir()
    # Only when set, so the keys of the plain variants stay what they were.
    extra = {"extra_packages": sorted(extra_packages)} if extra_packages else {}
    return {
        **extra,
        "format": FORMAT_VERSION,
        "variant": variant,
        "suite": SUITE,
        "from_default_image": source_packages(image),
        "packages": dict(sorted(versions.items())),
        "sources_sha256": hashlib.sha256(sources.encode()).hexdigest(),
        "initrd_init_sha256": hashlib.sha256(render_initrd_init().encode()).hexdigest(),
        "init_sha256": hashlib.sha256(render_rootfs_init().encode()).hexdigest(),
        "poweroff_sha256": hashlib.sha256((templates / POWEROFF_SCRIPT).read_bytes()).hexdigest(),
        "files_sha256": hashlib.sha256(
            "\0".join(
                (AUTHKEY_SCRIPT, AUTHKEY_UNIT, READY_UNIT, NETWORKD_CONFIG, CLOUD_CFG, SSHD_CONFIG)
            ).encode()
        ).hexdigest(),
        "masked": list(MASKED_UNITS),
        "excludes": list(DPKG_EXCLUDES),
        "initrd_modules": list(INITRD_MODULES),
        "guest_modules": list(GUEST_MODULES),
        "cmdline": BASE_CMDLINE,
    }


# --- the build -------------------------------------------------------------------------------


def build_rootfs(
    cache_root: Path | None = None,
    *,
    systemd: bool,
    cloud_init: bool,
    force: bool = False,
    progress: ProgressFn | None = None,
    extra_packages: Sequence[str] = (),
) -> RootfsImage:
    """The cached rootfs image of this variant for the current inputs, built first if needed.

    ``extra_packages`` are installed on top of the variant's packages and go into the cache
    key."""
    variant = variant_name(systemd=systemd, cloud_init=cloud_init)
    cache = cache_root if cache_root is not None else paths.cache_dir()
    image = build_image(cache, progress=progress)  # the kernel, busybox-static, the .debs
    extra_packages = tuple(dict.fromkeys(extra_packages))
    packages = tuple(dict.fromkeys((*rootfs_packages(variant), *extra_packages)))
    _note(progress, f"resolving the {variant} rootfs packages with apt")
    versions = {r.package: r.version for r in _apt_show(list(packages))}
    sources_path, sources_text = host_sources()
    material = key_material(image, variant, versions, sources_text, extra_packages)
    key = compute_key(material)
    top = _rootfs_dir(cache)
    final = top / key
    if not force and (found := _load(final)) is not None:
        _note(progress, f"rootfs image {key} ({variant}) is cached in {final}")
        return found
    if os.geteuid() != 0:
        raise HostError(
            "building a rootfs image needs root (mmdebstrap --mode=root, file ownership "
            "for mkfs.ext4 -d)",
            hint="run `vmlab image build --kind rootfs` as root (or use the default image)",
        )
    for tool, package in (
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("dpkg", "dpkg"),
        ("depmod", "kmod"),
    ):
        if shutil.which(tool) is None:
            raise HostError(f"{tool} is missing", hint=f"apt-get install {package}")
    with _locked(top / f".lock-{key}", timeout_s=LOCK_TIMEOUT_S):
        if not force and (found := _load(final)) is not None:
            return found
        for pattern in (f".build-{key}-*", f".old-{key}-*"):
            for stale in top.glob(pattern):  # left by killed builds (we hold the lock)
                unmount_under(stale)
                shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=top))
        work.chmod(0o755)
        try:
            _build_into(
                work,
                key=key,
                variant=variant,
                image=image,
                cache=cache,
                packages=packages,
                versions=versions,
                sources_path=sources_path,
                material=material,
                progress=progress,
                started=started,
            )
            _install(work, final)
        finally:
            unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
    built = _load(final)
    if built is None:
        raise HostError(
            f"the rootfs image in {final} is incomplete right after building it",
            hint=f"remove {final} and build again",
        )
    _note(progress, f"rootfs image {key} ({variant}) built in {time.monotonic() - started:.1f} s")
    return built


def _image_package(image: GuestImage, package: str) -> dict[str, str]:
    """The default image's manifest entry of ``package`` ('linux-image': its kernel)."""
    manifest = json.loads((image.root / "manifest.json").read_text())
    for entry in manifest["packages"]:
        if entry["package"] == package or (
            package == "linux-image" and entry["package"].startswith("linux-image-")
        ):
            return {str(k): str(v) for k, v in entry.items()}
    raise HostError(f"the default image {image.key} has no {package} package")


def source_packages(image: GuestImage) -> dict[str, dict[str, str]]:
    """What the rootfs takes from the default image: its kernel (booted, and its modules go
    into the tree) and busybox-static (the initramfs). The cache key uses these, not the
    default image's key, so changing the default guest's init does not rebuild rootfs images."""
    return {name: _image_package(image, name) for name in ("linux-image", "busybox-static")}


def _image_deb(image: GuestImage, cache: Path, package: str) -> Path:
    """The .deb of ``package`` that built the default image (kept in ``<cache>/debs``)."""
    deb = cache / "debs" / _image_package(image, package)["deb"]
    if not deb.is_file():
        raise HostError(
            f"{deb} (used by the default image {image.key}) is gone from the cache",
            hint="run `vmlab image build --force` to fetch the packages again",
        )
    return deb


def _tree_bytes(tree: Path) -> int:
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


def _mmdebstrap(
    tree: Path, packages: Sequence[str], sources_path: str, progress: ProgressFn | None
) -> None:
    _note(progress, f"mmdebstrap {SUITE}: minbase + {', '.join(packages)}")
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


def _customize(tree: Path, *, variant: str, kernel_tree: Path, kernel_version: str) -> str | None:
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


def _write_initrd(out: Path, *, busybox_tree: Path, kernel_tree: Path, kernel_version: str) -> int:
    """The switch-root initramfs: busybox-static, the virtio block modules, /init."""
    moddir = kernel_tree / "lib/modules" / kernel_version
    plan = resolve_modules(moddir, INITRD_MODULES)
    busybox = busybox_tree / "bin/busybox"
    applets = proc.run([busybox, "--list-full"], timeout_s=30).out.split()
    guest_moddir = f"/usr/lib/modules/{kernel_version}"
    modules = [(moddir / rel, f"{guest_moddir}/{rel}") for rel in plan.load_order]
    if any(not src.name.endswith(".ko") for src, _ in modules):
        raise HostError(
            "the guest kernel's modules are compressed; the rootfs initramfs expects plain .ko",
            hint="vmlab.guest.rootfs needs an update for this kernel package",
        )
    with out.open("wb") as f, NewcWriter(f) as cpio:
        for top in ("bin", "sbin", "lib"):
            cpio.add_dir(f"usr/{top}")
            cpio.add_symlink(top, f"usr/{top}")
        for name in ("proc", "sys", "dev", "newroot"):
            cpio.add_dir(name)
        cpio.add_chardev("dev/console", 5, 1, 0o600)
        cpio.add_chardev("dev/null", 1, 3, 0o666)
        cpio.add_bytes("init", render_initrd_init().encode(), 0o755)
        cpio.add_file("usr/bin/busybox", busybox, 0o755)
        for applet in applets:
            guest = _usrmerge("/" + applet)
            if "/" in applet and guest not in cpio:
                cpio.add_symlink(guest, "/usr/bin/busybox")
        for src, guest in modules:
            cpio.add_file(guest, src, 0o644)
        cpio.add_bytes(MODULES_PATH, "".join(f"{g}\n" for _s, g in modules).encode())
        cpio.add_bytes(COMPLETE_PATH, b"")
        return cpio.members


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _build_into(
    work: Path,
    *,
    key: str,
    variant: str,
    image: GuestImage,
    cache: Path,
    packages: Sequence[str],
    versions: Mapping[str, str],
    sources_path: str,
    material: Mapping[str, Any],
    progress: ProgressFn | None,
    started: float,
) -> None:
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 2)
        return now

    t = time.monotonic()
    kernel_tree, busybox_tree, tree = work / "kernel", work / "busybox", work / "tree"
    _note(progress, "extracting the default image's kernel modules and busybox-static")
    proc.run(["dpkg", "-x", _image_deb(image, cache, "linux-image"), kernel_tree], timeout_s=300)
    proc.run(["dpkg", "-x", _image_deb(image, cache, "busybox-static"), busybox_tree], timeout_s=60)
    kernel_version = image.kernel_version
    if not (kernel_tree / "lib/modules" / kernel_version).is_dir():
        raise HostError(f"the kernel package has no lib/modules/{kernel_version}")
    t = lap("extract_s", t)

    _mmdebstrap(tree, packages, sources_path, progress)
    t = lap("mmdebstrap_s", t)
    _note(progress, "adding kernel modules and vmlab's configuration")
    host_key = _customize(
        tree, variant=variant, kernel_tree=kernel_tree, kernel_version=kernel_version
    )
    fio = proc.run(["chroot", tree, "fio", "--version"], timeout_s=60)
    t = lap("customize_s", t)

    used = _tree_bytes(tree)
    size = -(-(used + used // 4 + FREE_SPACE_BYTES) // (256 * MIB)) * 256 * MIB
    _note(progress, f"mkfs.ext4 -d: {used / MIB:.0f} MiB into a {size // MIB} MiB file system")
    raw = work / "root.raw"
    proc.run(
        [
            "mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL,
            "-E", "lazy_itable_init=0,lazy_journal_init=0",
            "-d", str(tree), str(raw), str(size // 1024) + "k",
        ],
        timeout_s=900,
    )  # fmt: skip
    shutil.rmtree(tree)
    t = lap("mkfs_s", t)
    _note(progress, "qemu-img convert: raw → qcow2 base (uncompressed)")
    proc.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "base.qcow2")],
        timeout_s=900,
    )
    raw.unlink()
    (work / "base.qcow2").chmod(0o444)  # a base is never written; overlays are
    t = lap("convert_s", t)

    members = _write_initrd(
        work / "initrd.img",
        busybox_tree=busybox_tree,
        kernel_tree=kernel_tree,
        kernel_version=kernel_version,
    )
    kernel_name = image.kernel.name
    _link_or_copy(image.kernel, work / kernel_name)
    shutil.rmtree(kernel_tree)
    shutil.rmtree(busybox_tree)
    lap("initrd_s", t)

    cmdline = f"{BASE_CMDLINE} root=LABEL={ROOT_LABEL} rw"
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "variant": variant,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "suite": SUITE,
        "packages": dict(versions),
        "extra_packages": list(material.get("extra_packages", [])),
        "sources": sources_path or "mmdebstrap default",
        "default_image": image.key,
        "kernel_version": kernel_version,
        "kernel": kernel_name,
        "initrd": "initrd.img",
        "base": "base.qcow2",
        "base_format": "qcow2",
        "root_label": ROOT_LABEL,
        "cmdline": cmdline,
        "ready_marker": None if variant == "cloud" else READY_MARKER,
        "failed_marker": FAILED_MARKER,
        "host_key": host_key,
        "user": USER,
        "fio_version": fio.out.strip(),
        "min_memory_mib": MIN_MEMORY_MIB[variant],
        "material": dict(material),
        "build_time_s": round(time.monotonic() - started, 2),
        "timings": timings,
        "sizes": {
            "tree_bytes": used,
            "fs_bytes": size,
            "base_bytes": (work / "base.qcow2").stat().st_size,
            "kernel_bytes": (work / kernel_name).stat().st_size,
            "initrd_bytes": (work / "initrd.img").stat().st_size,
            "initrd_members": members,
        },
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def root_disk_args(
    overlay: Path, *, node: str = "root", fmt: str = "qcow2", bootindex: int | None = None
) -> list[str]:
    """QEMU argv tokens for the boot disk: the guest's overlay on virtio-blk, serial
    ``vmlab-root`` (the rootfs initramfs mounts it by file-system label, not by name).
    ``bootindex`` only for firmware boot (a cloud image with its own boot loader): with
    ``-kernel`` QEMU's linuxboot ROM holds bootindex 0."""
    quoted = str(overlay).replace(",", ",,")
    device = f"virtio-blk-pci,id=dev-{node},drive={node},serial={ROOT_SERIAL}"
    if bootindex is not None:
        device += f",bootindex={bootindex}"
    return [
        "-blockdev",
        f"driver=file,node-name={node}-file,filename={quoted}",
        "-blockdev",
        f"driver={fmt},node-name={node},file={node}-file",
        "-device",
        device,
    ]
