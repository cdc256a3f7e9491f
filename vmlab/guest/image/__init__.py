"""The default guest: Debian's cloud kernel plus an initramfs written in pure Python.

The initramfs (newc cpio, uncompressed) holds busybox-static, dropbear with sftp-server, fio
with every shared library ``ldd`` reports, and the virtio/SCSI/NVMe/ACPI-button modules in
``.modinfo depends=`` order. Packages come from ``apt-get download`` + ``dpkg -x`` into the
cache; nothing is installed on the host and no root is needed. Libraries that are not in those
packages (fio's ~80 MB, libc, ...) are copied from the host, which must run the same Debian
release. Images live in ``<cache>/images/<key>/``; the key hashes every input.

One module per step of the build:

* :mod:`.recipe` — what the guest is made of: packages, modules, command line, markers;
* :mod:`.debs` — Debian packages: apt resolution, the .deb cache, ``dpkg -x``;
* :mod:`.kernel` — the bzImage, and the uncompressed vmlinux booted through PVH;
* :mod:`.kernel_modules` — modinfo, load order, decompression;
* :mod:`.initramfs` — /init, the ldd closure, the host key, the archive;
* :mod:`.cache` — keys, locks, build directories renamed into place (shared with the rootfs);
* :mod:`.build` — the driver (:func:`build_image`), the manifest, :func:`find_image`.

The names other modules use are importable from here.
"""

from vmlab.guest.image.build import (
    FORMAT_VERSION,
    INITRD,
    SLIM_INITRD,
    GuestImage,
    build_image,
    find_image,
    key_material,
)
from vmlab.guest.image.cache import compute_key
from vmlab.guest.image.debs import DebRecord, resolve_packages
from vmlab.guest.image.initramfs import ldd_closure, render_init
from vmlab.guest.image.kernel import BZIMAGE, extract_vmlinux, pvh_entry
from vmlab.guest.image.kernel_modules import ModulePlan, resolve_modules
from vmlab.guest.image.recipe import (
    BASE_CMDLINE,
    DEFAULT_GW,
    DEFAULT_IP,
    FAILED_MARKER,
    HOSTNAME,
    MIN_MEMORY_MIB,
    MODULES,
    READY_MARKER,
    USER,
    authkey_cmdline,
)

__all__ = [
    "BASE_CMDLINE",
    "BZIMAGE",
    "DEFAULT_GW",
    "DEFAULT_IP",
    "FAILED_MARKER",
    "FORMAT_VERSION",
    "HOSTNAME",
    "INITRD",
    "MIN_MEMORY_MIB",
    "MODULES",
    "READY_MARKER",
    "SLIM_INITRD",
    "USER",
    "DebRecord",
    "GuestImage",
    "ModulePlan",
    "authkey_cmdline",
    "build_image",
    "compute_key",
    "extract_vmlinux",
    "find_image",
    "key_material",
    "ldd_closure",
    "pvh_entry",
    "render_init",
    "resolve_modules",
    "resolve_packages",
]
