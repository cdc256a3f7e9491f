"""Build the default guest and find it in the cache: the driver of the steps, its manifest.

:func:`build_image` resolves the packages with apt (:mod:`.debs`), computes the cache key
(:func:`key_material`: the exact .deb versions and checksums, the rendered init script, the
module list, the kernel command line, the versions of the host packages the copied libraries
come from, the libraries the slim initramfs stands in for, :data:`FORMAT_VERSION`, which a
change to how the stand-ins are made bumps) and returns the cached image of that key, or
builds it: download and unpack the packages, plan the modules (:mod:`.kernel_modules`),
prepare the kernel (:mod:`.kernel`), make the host key, compile the stand-ins (:mod:`.stubs`)
and write the full and the slim initramfs (:mod:`.initramfs`), manifest.json last, in a
temporary directory renamed into ``<cache>/images/<key>/`` (:mod:`.cache`).
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

from vmlab import paths, proc
from vmlab.errors import HostError
from vmlab.guest.image.aptcache import cached_resolve
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
from vmlab.guest.image.debs import (
    LAYOUT_HINT,
    DebRecord,
    debs_dir,
    extract_deb,
    fetch_debs,
    host_library_packages,
    resolve_packages,
)
from vmlab.guest.image.initramfs import (
    dropbear_host_key,
    ldd_closure,
    render_init,
    tree_env,
    write_initramfs,
)
from vmlab.guest.image.kernel import BZIMAGE, prepare_kernel
from vmlab.guest.image.kernel_modules import resolve_modules
from vmlab.guest.image.recipe import (
    BASE_CMDLINE,
    FAILED_MARKER,
    MIN_MEMORY_MIB,
    MODULES,
    ON_DEMAND_MODULES,
    READY_MARKER,
    USER,
)
from vmlab.guest.image.stubs import (
    FEATURE_STUBBED,
    STUBBED,
    build_feature_stubs,
    build_stubs,
    stubbed_of,
)

FORMAT_VERSION = 3  # 2: a slim initramfs beside the full one; 3: the folders /init writes to in it
LOCK_TIMEOUT_S = 900.0
IMAGES = "images"  # <cache>/images/<key>/
PINNED_IMAGE_ENV = "VMLAB_GUEST_IMAGE"  # a built image's directory, used as it is
INITRD, SLIM_INITRD = "initrd.img", "initrd-slim.img"  # the image's two initramfs files


@dataclass(frozen=True)
class GuestImage:
    root: Path  # the image dir
    key: str  # cache key
    kernel: Path  # what to pass to -kernel (vmlinux if PVH-capable else bzImage)
    initrd: Path  # the full initramfs: every library of fio's engines
    slim_initrd: Path  # stand-ins for the libraries only some engines use (.stubs)
    cmdline: str  # base kernel cmdline, without vmlab.authkey
    ready_marker: str
    failed_marker: str
    host_key: str  # "ssh-ed25519 AAAA..." public line of the guest's host key, for pinning
    user: str
    kernel_version: str
    fio_version: str
    min_memory_mib: int

    def initrd_for(self, full: bool) -> Path:
        """The initramfs a guest boots: the full one only where fio needs the real libraries
        (:func:`vmlab.guest.boot.needs_full_image`)."""
        return self.initrd if full else self.slim_initrd


def key_material(
    records: Sequence[DebRecord], init_text: str, host_packages: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "packages": [[r.package, r.version, r.filename, r.sha256] for r in records],
        "init_sha256": hashlib.sha256(init_text.encode()).hexdigest(),
        "modules": list(MODULES),
        "on_demand_modules": {k: list(v) for k, v in sorted(ON_DEMAND_MODULES.items())},
        "cmdline": BASE_CMDLINE,
        "host_packages": dict(sorted(host_packages.items())),
        "min_memory_mib": MIN_MEMORY_MIB,
        "stubbed": {soname: list(engines) for soname, engines in sorted(STUBBED.items())},
        "stubbed_features": {k: list(v) for k, v in sorted(FEATURE_STUBBED.items())},
    }


def _load(root: Path) -> GuestImage | None:
    """The image in ``root`` if it is complete and of this builder's format."""
    manifest = read_manifest(root, FORMAT_VERSION)
    if manifest is None:
        return None
    try:
        image = GuestImage(
            root=root,
            key=manifest["key"],
            kernel=root / manifest["kernel"],
            initrd=root / manifest["initrd"],
            slim_initrd=root / manifest["slim_initrd"],
            cmdline=manifest["cmdline"],
            ready_marker=manifest["ready_marker"],
            failed_marker=manifest["failed_marker"],
            host_key=manifest["host_key"],
            user=manifest["user"],
            kernel_version=manifest["kernel_version"],
            fio_version=manifest["fio_version"],
            min_memory_mib=int(manifest["min_memory_mib"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    files = (
        (image.kernel, "kernel_bytes"),
        (image.initrd, "initrd_bytes"),
        (image.slim_initrd, "slim_initrd_bytes"),
    )
    return image if sizes_match(manifest, files) else None


def find_image(cache_root: Path | None = None) -> GuestImage | None:
    """The newest complete cached image; never builds, never asks apt."""
    images = kind_dir(cache_root, IMAGES)
    if not images.is_dir():
        return None
    found = []
    for root in images.iterdir():
        if root.name.startswith(".") or not root.is_dir():
            continue
        image = _load(root)
        if image is not None:
            found.append(((root / "manifest.json").stat().st_mtime, image))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def build_image(
    cache_root: Path | None = None,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> GuestImage:
    """The cached image for the current inputs, building it first if needed (or if ``force``).

    With ``VMLAB_GUEST_IMAGE`` set (a built image's directory), that image, as it is: a nested
    L1 host boots the image its L0 built and carried in, without apt (see vmlab.nested)."""
    pinned = os.environ.get(PINNED_IMAGE_ENV)
    if pinned:
        if (found := _load(Path(pinned))) is None:
            raise HostError(
                f"{PINNED_IMAGE_ENV}={pinned} is not a complete guest image directory",
                hint=f"unset {PINNED_IMAGE_ENV} to build the image for the current inputs",
            )
        note(progress, f"guest image {found.key} pinned by {PINNED_IMAGE_ENV}: {found.root}")
        return found
    cache = cache_root if cache_root is not None else paths.cache_dir()
    images = kind_dir(cache, IMAGES)
    note(progress, "resolving guest packages with apt")
    records = cached_resolve(images / ".apt-resolved.json", resolve_packages)
    init_text = render_init()
    material = key_material(records, init_text, host_library_packages(records))
    key = compute_key(material)
    final = images / key
    if not force and (image := _load(final)) is not None:
        note(progress, f"guest image {key} is cached in {final}")
        return image
    with locked(images / f".lock-{key}", timeout_s=LOCK_TIMEOUT_S):
        if not force and (image := _load(final)) is not None:
            return image  # a concurrent build finished while we waited
        started = time.monotonic()
        with fresh_build(images, key) as work:
            debs = fetch_debs(records, debs_dir(cache), progress)
            _build_into(
                work,
                key=key,
                records=records,
                debs=debs,
                init_text=init_text,
                material=material,
                progress=progress,
                started=started,
            )
    image = load_built(final, _load, "guest image")
    note(progress, f"guest image {key} built in {time.monotonic() - started:.1f} s: {final}")
    return image


def _build_into(
    work: Path,
    *,
    key: str,
    records: Sequence[DebRecord],
    debs: Mapping[str, Path],
    init_text: str,
    material: Mapping[str, Any],
    progress: ProgressFn | None,
    started: float,
) -> None:
    """Everything of the image into ``work``, manifest.json last."""
    tree = work / "tree"
    tree.mkdir()
    note(progress, f"extracting {len(records)} packages")
    for rec in records:
        extract_deb(debs[rec.package], tree)

    kernel_rec = records[0]
    kernel_version = kernel_rec.package.removeprefix("linux-image-")
    moddir = tree / "lib/modules" / kernel_version
    bzimage_src = tree / "boot" / f"vmlinuz-{kernel_version}"
    if not bzimage_src.is_file() or not moddir.is_dir():
        raise HostError(
            f"{kernel_rec.deb_name} has no boot/vmlinuz-{kernel_version} or "
            f"lib/modules/{kernel_version}",
            hint="the Debian kernel package layout changed: vmlab.guest.image needs an update",
        )
    plan = resolve_modules(moddir, MODULES)
    at_boot = set(plan.load_order)
    on_demand = {  # what each group adds to the modules /init loads, in load order
        group: tuple(m for m in resolve_modules(moddir, names).load_order if m not in at_boot)
        for group, names in sorted(ON_DEMAND_MODULES.items())
    }
    note(progress, "preparing the kernel")
    kernel_file, kernel_kind, kernel_note = prepare_kernel(work, bzimage_src)
    note(progress, "generating the guest's ssh host key")
    host_key_file = work / "host_key"
    host_key = dropbear_host_key(tree, host_key_file)
    fio = proc.run(
        [tree / "usr/bin/fio", "--version"],
        env=tree_env(tree),
        timeout_s=60,
        missing_hint=LAYOUT_HINT,
    )

    note(progress, "compiling stand-ins of the libraries only some fio engines use")
    stubs = build_stubs(
        tree / "usr/bin/fio", stubbed_of(ldd_closure(tree / "usr/bin/fio", tree)), work / "stubs"
    )
    features = build_feature_stubs(ldd_closure(tree / "usr/bin/iperf3", tree), work / "stubs")
    note(progress, "writing the initramfs, full and slim")
    (work / "init.sh").write_text(init_text)
    content, slim = (
        write_initramfs(
            work / name,
            tree=tree,
            moddir=moddir,
            plan=plan,
            on_demand=on_demand,
            init_text=init_text,
            host_key_file=host_key_file,
            stubs=stub_dir,
        )
        for name, stub_dir in ((INITRD, None), (SLIM_INITRD, work / "stubs"))
    )
    host_key_file.unlink()
    shutil.rmtree(work / "stubs")
    shutil.rmtree(tree)

    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": [
            {"package": r.package, "version": r.version, "deb": r.deb_name, "sha256": r.sha256}
            for r in records
        ],
        "host_packages": material["host_packages"],
        "host_libraries": content.pop("host_libraries"),
        "kernel_version": kernel_version,
        "kernel_package_version": kernel_rec.version,
        "kernel_kind": kernel_kind,
        "kernel_note": kernel_note,
        "kernel": kernel_file,
        "bzimage": BZIMAGE,
        "initrd": INITRD,
        "slim_initrd": SLIM_INITRD,
        "stubbed": {soname: STUBBED[soname] for soname in sorted(stubs)},
        "stubbed_features": {soname: FEATURE_STUBBED[soname][1] for soname in sorted(features)},
        "cmdline": BASE_CMDLINE,
        "ready_marker": READY_MARKER,
        "failed_marker": FAILED_MARKER,
        "user": USER,
        "host_key": host_key,
        "fio_version": fio.out.strip(),
        "min_memory_mib": MIN_MEMORY_MIB,
        "modules": {
            "requested": list(MODULES),
            "builtin": list(plan.builtin),
            "load_order": list(plan.load_order),
            "on_demand": {group: list(order) for group, order in on_demand.items()},
        },
        "build_time_s": round(time.monotonic() - started, 2),
        "sizes": {
            "kernel_bytes": (work / kernel_file).stat().st_size,
            "bzimage_bytes": (work / BZIMAGE).stat().st_size,
            "vmlinux_bytes": (work / "vmlinux").stat().st_size if kernel_file == "vmlinux" else 0,
            "initrd_bytes": (work / INITRD).stat().st_size,
            "slim_initrd_bytes": (work / SLIM_INITRD).stat().st_size,
            "slim_initrd_members": slim["initrd_members"],
            **content,
        },
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
