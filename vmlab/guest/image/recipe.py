"""What the default guest is made of, and how vmlab talks to it.

The Debian packages it is built from, the kernel modules its init loads, its kernel command
line, the markers its init prints on the serial port, its user, hostname and user-mode network
address, the memory it needs, and the ``vmlab.authkey=`` argument that hands it the lab's SSH
key. All of these are inputs of the image's cache key (:func:`vmlab.guest.image.build.
key_material`); the rootfs guests (:mod:`vmlab.guest.rootfs`) reuse the markers, the network
defaults and the command line.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from vmlab.errors import HostError

READY_MARKER = "VMLAB-READY"
FAILED_MARKER = "VMLAB-INIT-FAILED"
USER = "root"
HOSTNAME = "vmlab"
DEFAULT_IP = "10.0.2.15/24"  # QEMU user-mode networking's guest address ...
DEFAULT_GW = "10.0.2.2"  # ... and its gateway
MIN_MEMORY_MIB = 384
# The kernel's own boot options, vmlab's /init arguments aside. i8042.*: no probing for a PS/2
# mouse and mux. cryptomgr.notests: no self-tests of each crypto algorithm as it registers
# (hmac, sha*, aes...): under TCG they were 0.4 s of a 2.3 s boot to SSH-ready, and the
# algorithms work the same without them (FIPS mode, which requires them, is not used).
BASE_CMDLINE = (
    "console=ttyS0 quiet panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
    " cryptomgr.notests"
)
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
USERLAND_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "openssh-sftp-server",
    "fio",
    "iperf3",  # network jobs; with its two libraries (libcrypto comes with fio's)
    "libiperf0",
    "libsctp1",
)
# button + evdev: ACPI power button → /dev/input/event* → busybox acpid (QMP system_powerdown).
# virtio_rng: with -device virtio-rng-pci the kernel's RNG is ready at once (else dropbear waits
# seconds for entropy under TCG).
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "nvme",
    "virtio_net",
    "button",
    "evdev",
    "virtio_rng",
)
# Modules the image carries but /init does not load: a feature loads its group on demand
# (`vmlab-modules NAME` in the guest, or /init with the groups named by BOOT_GROUPS_ARG on the
# kernel command line) so that no guest pays for them at boot. rbd: the guest maps an RBD
# image with the kernel driver (a disk with target guest and backend.krbd). scsi: a
# virtio-scsi or vhost-scsi disk (the SCSI core is the largest module a guest would load).
ON_DEMAND_MODULES: dict[str, tuple[str, ...]] = {
    "rbd": ("rbd",),
    "scsi": ("virtio_scsi", "sd_mod"),
}
BOOT_GROUPS_ARG = "vmlab.modules"  # vmlab.modules=scsi[,GROUP...]: loaded with MODULES


def authkey_cmdline(public_line: str) -> str:
    """'ssh-ed25519 AAAA... comment' → 'vmlab.authkey=ssh-ed25519:AAAA...'."""
    fields = public_line.strip().split()
    valid = (
        len(fields) >= 2
        and re.fullmatch(r"[a-z0-9@.\-]+", fields[0]) is not None
        and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", fields[1]) is not None
    )
    if valid:
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            valid = False
        else:
            (n,) = struct.unpack_from(">I", blob, 0) if len(blob) >= 4 else (0,)
            valid = blob[4 : 4 + n] == fields[0].encode()
    if not valid:
        raise HostError(
            f"not an OpenSSH public key line: {public_line[:60]!r}",
            hint="pass the contents of a .pub file: 'ssh-ed25519 AAAA... comment'",
        )
    return f"vmlab.authkey={fields[0]}:{fields[1]}"
