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
the apt sources; the templates; ``FORMAT_VERSION``). A build happens in a temporary directory
renamed into place under a per-key lock, in the cache the default image uses
(:mod:`vmlab.guest.image.cache`).

One module per step: :mod:`.tree` (mmdebstrap and what vmlab adds to the tree),
:mod:`.initrd` (the switch-root initramfs), :mod:`.build` (the driver, the cache entry, the
boot disk's QEMU arguments). The names other modules use are importable from here.
"""

from vmlab.guest.rootfs.build import (
    ROOT_SERIAL,
    RootfsImage,
    build_rootfs,
    key_material,
    root_disk_args,
    source_packages,
    variant_name,
)
from vmlab.guest.rootfs.initrd import render_initrd_init
from vmlab.guest.rootfs.tree import ROOT_LABEL, render_rootfs_init, rootfs_packages

__all__ = [
    "ROOT_LABEL",
    "ROOT_SERIAL",
    "RootfsImage",
    "build_rootfs",
    "key_material",
    "render_initrd_init",
    "render_rootfs_init",
    "root_disk_args",
    "rootfs_packages",
    "source_packages",
    "variant_name",
]
