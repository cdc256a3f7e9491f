"""Build a rootfs guest image and boot it: the driver, the cache entry, the root disk.

:func:`build_rootfs` first gets the default image (:func:`vmlab.guest.image.build_image`: its
kernel and busybox-static .debs), resolves the variant's packages with apt and computes the
cache key (:func:`key_material`: the kernel and busybox packages of the default image, the
candidate versions, the apt sources, the templates and files, :data:`FORMAT_VERSION`). On a
miss, as root: the tree (:mod:`.tree`), ``mkfs.ext4 -d`` (no loop mount) into a raw file that
``qemu-img convert`` turns into an uncompressed qcow2 *base*, the initramfs (:mod:`.initrd`),
manifest.json last, in a temporary directory renamed into ``<cache>/rootfs/<key>/``
(:mod:`vmlab.guest.image.cache`). Guests boot per-guest overlays of the base
(:func:`vmlab.guest.cloud.make_overlay`) on :func:`root_disk_args`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab import paths, proc, resources
from vmlab.errors import HostError
from vmlab.guest.image import (
    BASE_CMDLINE,
    BZIMAGE,
    FAILED_MARKER,
    READY_MARKER,
    GuestImage,
    build_image,
)
from vmlab.guest.image.build import IMAGES
from vmlab.guest.image.cache import (
    ProgressFn,
    compute_key,
    fresh_build,
    kind_dir,
    load_built,
    locked,
    note,
    read_manifest,
    sizes_match,
)
from vmlab.guest.image.debs import DebRecord, apt_show, debs_dir, extract_deb
from vmlab.guest.rootfs.initrd import (
    INITRD_MODULES,
    ROOT_FS_MODULES,
    render_initrd_init,
    write_initrd,
)
from vmlab.guest.rootfs.kernel import fetch_kernel, kernel_in_tree, resolve_kernel
from vmlab.guest.rootfs.tree import (
    DPKG_EXCLUDES,
    GUEST_MODULES,
    MASKED_UNITS,
    POWEROFF_SCRIPT,
    ROOT_LABEL,
    SUITE,
    customize,
    files_sha256,
    host_sources,
    mmdebstrap,
    render_rootfs_init,
    rootfs_packages,
    tree_bytes,
    unmount_under,
)

FORMAT_VERSION = 1
ROOTFS = "rootfs"  # <cache>/rootfs/<key>/
ROOT_SERIAL = "vmlab-root"  # virtio serial of the boot disk
USER = "root"
LOCK_TIMEOUT_S = 1800.0
MIB = 1 << 20
FREE_SPACE_BYTES = 1 << 30  # room in the base for packages a seed installs
MIN_MEMORY_MIB = {"minimal": 256, "systemd": 512, "cloud": 768}
# The programs a build runs, and the Debian packages that have them.
TOOLS = (
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
    ("dpkg", "dpkg"),
    ("depmod", "kmod"),
)


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
    kernel_package: str | None = None  # its own kernel (a nested L1's); None: the default's


def variant_name(*, systemd: bool, cloud_init: bool) -> str:
    if cloud_init and not systemd:
        raise HostError(
            "a rootfs with cloud-init needs systemd (cloud-init runs as systemd units)",
            hint="build with --systemd, or without --cloud-init",
        )
    return "cloud" if cloud_init else "systemd" if systemd else "minimal"


def _load(root: Path) -> RootfsImage | None:
    manifest = read_manifest(root, FORMAT_VERSION)
    if manifest is None:
        return None
    try:
        image = RootfsImage(
            root=root,
            key=manifest["key"],
            variant=manifest["variant"],
            base=root / manifest["base"],
            base_format=manifest["base_format"],
            kernel=root / manifest["kernel"],
            bzimage=(
                root / manifest["kernel"]
                if manifest.get("kernel_package")
                else kind_dir(root.parent.parent, IMAGES) / manifest["default_image"] / BZIMAGE
            ),
            initrd=root / manifest["initrd"],
            cmdline=manifest["cmdline"],
            ready_marker=manifest["ready_marker"],
            failed_marker=manifest["failed_marker"],
            host_key=manifest["host_key"],
            user=manifest["user"],
            kernel_version=manifest["kernel_version"],
            min_memory_mib=int(manifest["min_memory_mib"]),
            extra_packages=tuple(manifest.get("extra_packages", ())),
            kernel_package=manifest.get("kernel_package"),
        )
    except (ValueError, KeyError, TypeError):
        return None
    files = (
        (image.base, "base_bytes"),
        (image.kernel, "kernel_bytes"),
        (image.initrd, "initrd_bytes"),
    )
    return image if sizes_match(manifest, files) else None


def key_material(
    image: GuestImage,
    variant: str,
    versions: Mapping[str, str],
    sources: str,
    extra_packages: Sequence[str] = (),
    kernel: DebRecord | None = None,
) -> dict[str, Any]:
    templates = resources.templates_dir()
    # Only when set, so the keys of the plain variants stay what they were.
    extra: dict[str, Any] = {"extra_packages": sorted(extra_packages)} if extra_packages else {}
    if kernel is not None:
        extra["kernel_package"] = {
            "package": kernel.package,
            "version": kernel.version,
            "sha256": kernel.sha256,
            "root_fs_modules": list(ROOT_FS_MODULES),
        }
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
        "files_sha256": files_sha256(),
        "masked": list(MASKED_UNITS),
        "excludes": list(DPKG_EXCLUDES),
        "initrd_modules": list(INITRD_MODULES),
        "guest_modules": list(GUEST_MODULES),
        "cmdline": BASE_CMDLINE,
    }


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
    deb = debs_dir(cache) / _image_package(image, package)["deb"]
    if not deb.is_file():
        raise HostError(
            f"{deb} (used by the default image {image.key}) is gone from the cache",
            hint="run `vmlab image build --force` to fetch the packages again",
        )
    return deb


def build_rootfs(
    cache_root: Path | None = None,
    *,
    systemd: bool,
    cloud_init: bool,
    force: bool = False,
    progress: ProgressFn | None = None,
    extra_packages: Sequence[str] = (),
    kernel_package: str | None = None,
) -> RootfsImage:
    """The cached rootfs image of this variant for the current inputs, built first if needed.

    ``extra_packages`` are installed on top of the variant's packages and go into the cache
    key. ``kernel_package`` (a Debian kernel package, e.g. linux-image-amd64, or from another
    suite: linux-image-amd64/bookworm-backports) is booted instead of the default image's
    kernel, with all its modules in the tree; its exact version and checksum go into the key."""
    variant = variant_name(systemd=systemd, cloud_init=cloud_init)
    cache = cache_root if cache_root is not None else paths.cache_dir()
    image = build_image(cache, progress=progress)  # the kernel, busybox-static, the .debs
    extra_packages = tuple(dict.fromkeys(extra_packages))
    packages = tuple(dict.fromkeys((*rootfs_packages(variant), *extra_packages)))
    note(progress, f"resolving the {variant} rootfs packages with apt")
    versions = {r.package: r.version for r in apt_show(list(packages))}
    kernel = resolve_kernel(kernel_package, cache) if kernel_package else None
    sources_path, sources_text = host_sources()
    material = key_material(image, variant, versions, sources_text, extra_packages, kernel)
    key = compute_key(material)
    top = kind_dir(cache, ROOTFS)
    final = top / key
    if not force and (found := _load(final)) is not None:
        note(progress, f"rootfs image {key} ({variant}) is cached in {final}")
        return found
    if os.geteuid() != 0:
        raise HostError(
            "building a rootfs image needs root (mmdebstrap --mode=root, file ownership "
            "for mkfs.ext4 -d)",
            hint="run `vmlab image build --kind rootfs` as root (or use the default image)",
        )
    for tool, package in TOOLS:
        if shutil.which(tool) is None:
            raise HostError(f"{tool} is missing", hint=f"apt-get install {package}")
    with locked(top / f".lock-{key}", timeout_s=LOCK_TIMEOUT_S):
        if not force and (found := _load(final)) is not None:
            return found
        started = time.monotonic()
        kernel_deb = fetch_kernel(kernel, cache, progress) if kernel else None
        with fresh_build(top, key, release=unmount_under) as work:
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
                kernel_deb=kernel_deb,
            )
    built = load_built(final, _load, "rootfs image")
    note(progress, f"rootfs image {key} ({variant}) built in {time.monotonic() - started:.1f} s")
    return built


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
    kernel_deb: Path | None = None,
) -> None:
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 2)
        return now

    t = time.monotonic()
    kernel_tree, busybox_tree, tree = work / "kernel", work / "busybox", work / "tree"
    if kernel_deb is None:
        note(progress, "extracting the default image's kernel modules and busybox-static")
        extract_deb(_image_deb(image, cache, "linux-image"), kernel_tree, timeout_s=300)
        kernel_version, kernel_src = image.kernel_version, image.kernel
    else:
        note(progress, f"extracting {kernel_deb.name} (its kernel and modules)")
        extract_deb(kernel_deb, kernel_tree, timeout_s=600)
        kernel_version, kernel_src = kernel_in_tree(kernel_tree)
    extract_deb(_image_deb(image, cache, "busybox-static"), busybox_tree, timeout_s=60)
    if not (kernel_tree / "lib/modules" / kernel_version).is_dir():
        raise HostError(f"the kernel package has no lib/modules/{kernel_version}")
    t = lap("extract_s", t)

    mmdebstrap(tree, packages, sources_path, progress)
    t = lap("mmdebstrap_s", t)
    note(progress, "adding kernel modules and vmlab's configuration")
    host_key = customize(
        tree, variant=variant, kernel_tree=kernel_tree, kernel_version=kernel_version
    )
    fio = proc.run(["chroot", tree, "fio", "--version"], timeout_s=60)
    t = lap("customize_s", t)

    used = tree_bytes(tree)
    size = -(-(used + used // 4 + FREE_SPACE_BYTES) // (256 * MIB)) * 256 * MIB
    note(progress, f"mkfs.ext4 -d: {used / MIB:.0f} MiB into a {size // MIB} MiB file system")
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
    note(progress, "qemu-img convert: raw → qcow2 base (uncompressed)")
    proc.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "base.qcow2")],
        timeout_s=900,
    )
    raw.unlink()
    (work / "base.qcow2").chmod(0o444)  # a base is never written; overlays are
    t = lap("convert_s", t)

    members = write_initrd(
        work / "initrd.img",
        busybox_tree=busybox_tree,
        kernel_tree=kernel_tree,
        kernel_version=kernel_version,
        root_fs_modules=kernel_deb is not None,
    )
    kernel_name = kernel_src.name
    if kernel_deb is None:
        _link_or_copy(kernel_src, work / kernel_name)
    else:
        shutil.copy2(kernel_src, work / kernel_name)  # kernel_tree is removed next
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
        "kernel_package": kernel_deb.name if kernel_deb else None,
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
