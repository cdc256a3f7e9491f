"""The rootfs guests' initramfs: just enough to mount the root disk and switch to it.

busybox-static and the virtio block modules (Debian's cloud kernel builds them as modules;
ext4 is built in), both from the default image's packages, and an ``/init``
(templates/cloudinit/rootfs-initrd.sh.j2) that loads the modules, waits up to
:data:`ROOTWAIT_S` for ``root=LABEL=vmlab-root`` and ``switch_root``s into it.
"""

from __future__ import annotations

import lzma
from pathlib import Path

from vmlab.errors import HostError
from vmlab.guest.cpio import NewcWriter
from vmlab.guest.image.initramfs import add_busybox
from vmlab.guest.image.kernel_modules import resolve_modules
from vmlab.guest.image.recipe import FAILED_MARKER
from vmlab.guest.rootfs.tree import ROOT_LABEL
from vmlab.render import environment

INITRD_MODULES = ("virtio_pci", "virtio_blk")
# A distro kernel of its own (a nested L1's) may build the root file system as modules
# (Debian's generic kernel: ext4=m, and ext4's checksums want crc32c); loaded when present.
ROOT_FS_MODULES = ("crc32c_generic", "ext4")
INITRD_TEMPLATE = "cloudinit/rootfs-initrd.sh.j2"
ROOTWAIT_S = 30
COMPLETE_PATH = "/etc/vmlab/complete"
MODULES_PATH = "/etc/vmlab/modules"


def render_initrd_init() -> str:
    template = environment().get_template(INITRD_TEMPLATE)
    return template.render(
        root_label=ROOT_LABEL,
        rootwait_s=ROOTWAIT_S,
        failed_marker=FAILED_MARKER,
        complete_path=COMPLETE_PATH,
        modules_path=MODULES_PATH,
    )


def present(moddir: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` the kernel has as a module file (built-in ones need no loading)."""
    files = {p.name.split(".ko", 1)[0].replace("-", "_") for p in moddir.rglob("*.ko*")}
    return tuple(n for n in names if n in files)


def write_initrd(
    out: Path,
    *,
    busybox_tree: Path,
    kernel_tree: Path,
    kernel_version: str,
    root_fs_modules: bool = False,
) -> int:
    """The switch-root initramfs: busybox-static, the virtio block modules (and with
    ``root_fs_modules`` those of :data:`ROOT_FS_MODULES` the kernel has as modules), /init."""
    moddir = kernel_tree / "lib/modules" / kernel_version
    extra = present(moddir, ROOT_FS_MODULES) if root_fs_modules else ()
    plan = resolve_modules(moddir, (*INITRD_MODULES, *extra))
    guest_moddir = f"/usr/lib/modules/{kernel_version}"
    # busybox insmod loads plain .ko only: a kernel whose modules are xz-compressed (Debian's
    # 6.12 in bookworm-backports) has them unpacked into the initramfs.
    modules = [
        (moddir / rel, f"{guest_moddir}/{rel.removesuffix('.xz')}") for rel in plan.load_order
    ]
    if any(not src.name.endswith((".ko", ".ko.xz")) for src, _ in modules):
        raise HostError(
            "the guest kernel's modules are compressed with other than xz; the rootfs "
            "initramfs takes plain or xz-compressed .ko",
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
        add_busybox(cpio, busybox_tree / "bin/busybox")
        for src, guest in modules:
            if src.name.endswith(".xz"):
                cpio.add_bytes(guest, lzma.decompress(src.read_bytes()), 0o644)
            else:
                cpio.add_file(guest, src, 0o644)
        cpio.add_bytes(MODULES_PATH, "".join(f"{g}\n" for _s, g in modules).encode())
        cpio.add_bytes(COMPLETE_PATH, b"")
        return cpio.members
