"""A rootfs booted with a Debian kernel package of its own (a nested L1 host's kernel), rather
than the default image's cloud kernel: resolve the package (a metapackage such as
``linux-image-amd64`` to the versioned image it depends on), fetch its .deb into the cache,
and find the kernel and its modules in the unpacked tree."""

from __future__ import annotations

import re
from pathlib import Path

from vmlab.errors import HostError
from vmlab.guest.image.cache import ProgressFn
from vmlab.guest.image.debs import (
    APT_HINT,
    DebRecord,
    apt_show,
    debs_dir,
    fetch_debs,
    suite_apt_options,
)


def resolve_kernel(package: str, cache: Path) -> DebRecord:
    """The versioned linux-image package behind ``package`` (itself when it has a kernel);
    ``package/suite`` reads it from that suite (bookworm-backports: a newer kernel for a
    Debian 12 userland), through private package lists under ``cache``."""
    name, _, suite = package.partition("/")
    options = suite_apt_options(suite, cache) if suite else ()
    (record,) = apt_show([name], options)
    if re.fullmatch(r"linux-image-\d.*", record.package):
        return record
    match = re.search(r"(linux-image-\d[^\s,(]*)\s*(?:\(=\s*([^)\s]+)\))?", record.depends)
    if match is None:
        raise HostError(
            f"{name} {record.version} is no kernel image and depends on none "
            f"({record.depends.strip(', ')!r})",
            hint="name a Debian kernel package, e.g. linux-image-amd64 or linux-image-cloud-amd64",
        )
    versioned = match.group(1) + (f"={match.group(2)}" if match.group(2) else "")
    (kernel,) = apt_show([versioned], options)
    return kernel


def fetch_kernel(record: DebRecord, cache: Path, progress: ProgressFn | None) -> Path:
    return fetch_debs([record], debs_dir(cache), progress)[record.package]


def kernel_in_tree(tree: Path) -> tuple[str, Path]:
    """(version, vmlinuz) of the one kernel in an unpacked linux-image package."""
    versions = sorted(p.name for p in (tree / "lib/modules").glob("*") if p.is_dir())
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(versions) != 1 or len(kernels) != 1:
        raise HostError(
            f"the kernel package holds {len(kernels)} kernels and {len(versions)} module trees "
            "(expected one of each)",
            hint=APT_HINT,
        )
    return versions[0], kernels[0]
