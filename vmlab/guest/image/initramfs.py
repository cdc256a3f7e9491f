"""The default guest's initramfs: its /init, the programs and libraries, the archive itself.

The initramfs is an uncompressed newc cpio written in Python (:mod:`vmlab.guest.cpio`): a
merged-/usr layout, ``/init`` rendered from templates/guest/init.sh.j2, busybox-static with a
symlink per applet, dropbear (its host key made here by the extracted ``dropbearkey``),
sftp-server at ``/usr/lib/sftp-server`` (or SFTP fails with "EOF during negotiation"), fio and
iperf3 with every shared library ``ldd`` reports, the kernel modules and the list /init loads
them from. Libraries that are not in the extracted packages (fio's ~80 MB, libc, ...) come from
the host, which must run the same Debian release. ``/etc/vmlab/complete`` is the last member:
/init checks it to tell a truncated initramfs from a complete one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmlab import proc
from vmlab.errors import CommandError, HostError
from vmlab.guest.cpio import NewcWriter
from vmlab.guest.image.debs import LAYOUT_HINT
from vmlab.guest.image.kernel_modules import ModulePlan, module_bytes
from vmlab.guest.image.recipe import (
    BOOT_GROUPS_ARG,
    DEFAULT_GW,
    DEFAULT_IP,
    FAILED_MARKER,
    HOSTNAME,
    MIN_MEMORY_MIB,
    READY_MARKER,
)
from vmlab.render import environment

MULTIARCH = "x86_64-linux-gnu"
INIT_TEMPLATE = "guest/init.sh.j2"
HOST_KEY_GUEST_PATH = "/etc/dropbear/dropbear_ed25519_host_key"
MODULE_LIST_GUEST_PATH = "/etc/vmlab/modules"
ON_DEMAND_GUEST_DIR = "/etc/vmlab/modules.d"  # one list per group, loaded by vmlab-modules
COMPLETE_GUEST_PATH = "/etc/vmlab/complete"  # the initramfs' last member


def render_init() -> str:
    """The default guest's /init (templates/guest/init.sh.j2); its hash is in the cache key."""
    template = environment().get_template(INIT_TEMPLATE)
    return template.render(
        ready_marker=READY_MARKER,
        failed_marker=FAILED_MARKER,
        hostname=HOSTNAME,
        default_ip=DEFAULT_IP,
        default_gw=DEFAULT_GW,
        complete_path=COMPLETE_GUEST_PATH,
        modules_path=MODULE_LIST_GUEST_PATH,
        on_demand_dir=ON_DEMAND_GUEST_DIR,
        groups_arg=BOOT_GROUPS_ARG,
        host_key_path=HOST_KEY_GUEST_PATH,
        min_memory_mib=MIN_MEMORY_MIB,
    )


def usrmerge(path: str) -> str:
    """Debian 12 is merged-/usr: /lib/x → /usr/lib/x (the guest has /lib → usr/lib)."""
    for top in ("bin", "sbin", "lib", "lib64"):
        if path == f"/{top}" or path.startswith(f"/{top}/"):
            return f"/usr{path}"
    return path


def _lib_dirs(tree: Path) -> list[Path]:
    return [tree / "usr/lib" / MULTIARCH, tree / "lib" / MULTIARCH]


def tree_env(tree: Path) -> dict[str, str]:
    """Environment to run a binary of the extracted tree on the host."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LD_LIBRARY_PATH": ":".join(str(d) for d in _lib_dirs(tree)),
    }


def ldd_closure(binary: Path, tree: Path, stubs: Path | None = None) -> dict[str, Path]:
    """Guest path → file to copy, for every shared object ``binary`` loads: libraries from
    ``stubs`` (stand-ins, :mod:`.stubs`) first, then from the extracted ``tree``
    (LD_LIBRARY_PATH), then the host's."""
    env = tree_env(tree)
    if stubs is not None:
        env["LD_LIBRARY_PATH"] = f"{stubs}:{env['LD_LIBRARY_PATH']}"
    done = proc.run(
        ["ldd", binary],
        env=env,
        timeout_s=60,
        check=False,
        missing_hint="apt-get install libc-bin",
    )
    text = done.out + done.err
    if "not a dynamic executable" in text:
        return {}
    missing = re.findall(r"^\s*(\S+) => not found", text, re.MULTILINE)
    if missing:
        raise HostError(
            f"{', '.join(missing)}, needed by {binary.name}, not found on this host",
            hint="install the Debian packages that ship them (`apt-get install fio` pulls all "
            "of fio's libraries): the guest copies its libraries from the host",
        )
    if not done.ok:
        raise CommandError("ldd failed", argv=done.argv, returncode=done.returncode, output=text)
    libs: dict[str, Path] = {}
    for match in re.finditer(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", text, re.MULTILINE):
        seen = Path(match.group(1))  # lines without a path (linux-vdso.so.1) do not match
        if stubs is not None and seen.parent == stubs:
            libs[f"/usr/lib/{MULTIARCH}/{seen.name}"] = seen
            continue
        try:
            guest = "/" + seen.relative_to(tree).as_posix()
        except ValueError:
            guest = usrmerge(os.path.normpath(str(seen)))
        libs[guest] = seen.resolve()
    return libs


def dropbear_host_key(tree: Path, key_file: Path) -> str:
    """An ed25519 host key made by the extracted dropbearkey; returns 'ssh-ed25519 AAAA...'."""
    dropbearkey, env = str(tree / "usr/bin/dropbearkey"), tree_env(tree)
    proc.run(
        [dropbearkey, "-t", "ed25519", "-f", key_file],
        env=env,
        timeout_s=60,
        missing_hint=LAYOUT_HINT,
    )
    public = proc.run(
        [dropbearkey, "-y", "-f", key_file], env=env, timeout_s=60, missing_hint=LAYOUT_HINT
    )
    for line in public.out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise HostError(f"dropbearkey -y printed no ssh-ed25519 line for {key_file}")


def add_busybox(cpio: NewcWriter, busybox: Path) -> None:
    """busybox at /usr/bin/busybox and, for each applet (merged-/usr path) the archive does
    not have yet, a symlink to it."""
    applets = proc.run([busybox, "--list-full"], timeout_s=30, missing_hint=LAYOUT_HINT).out
    cpio.add_file("usr/bin/busybox", busybox, 0o755)
    for applet in applets.split():
        guest = usrmerge("/" + applet)
        if "/" in applet and guest not in cpio:
            cpio.add_symlink(guest, "/usr/bin/busybox")


def write_initramfs(
    out: Path,
    *,
    tree: Path,
    moddir: Path,
    plan: ModulePlan,
    init_text: str,
    host_key_file: Path,
    on_demand: Mapping[str, Sequence[str]] | None = None,
    stubs: Path | None = None,
) -> dict[str, Any]:
    """The initramfs: merged-/usr layout, /init, busybox + applets, dropbear, sftp-server, fio,
    their libraries, the modules (decompressed) and the list /init loads them from; and
    ``on_demand`` (group -> module paths, load order) with one list per group that the guest's
    ``vmlab-modules GROUP`` loads. With ``stubs`` (a directory of stand-ins, :mod:`.stubs`),
    the slim initramfs: the stand-ins in place of the libraries they stand for, and none of
    what those would pull in."""
    binaries = {
        "/usr/sbin/dropbear": tree / "usr/sbin/dropbear",
        "/usr/lib/openssh/sftp-server": tree / "usr/lib/openssh/sftp-server",
        "/usr/bin/fio": tree / "usr/bin/fio",
        "/usr/bin/iperf3": tree / "usr/bin/iperf3",
    }
    libraries: dict[str, Path] = {}
    for binary in binaries.values():
        libraries.update(ldd_closure(binary, tree, stubs))
    host_libraries = sorted(
        str(src)
        for src in libraries.values()
        if tree not in src.parents and (stubs is None or src.parent != stubs)
    )
    guest_moddir = f"/usr/lib/modules/{moddir.name}"

    def guest_path(rel: str) -> str:  # compressed modules are stored decompressed
        return re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", f"{guest_moddir}/{rel}")

    groups = {group: list(order) for group, order in (on_demand or {}).items()}
    wanted = dict.fromkeys([*plan.load_order, *(m for order in groups.values() for m in order)])
    modules = [(moddir / rel, guest_path(rel)) for rel in wanted]  # (source, guest path)

    with out.open("wb") as f, NewcWriter(f) as cpio:
        for top in ("bin", "sbin", "lib", "lib64"):
            cpio.add_dir(f"usr/{top}")
            cpio.add_symlink(top, f"usr/{top}")
        # every folder /init writes to, so that it need not start mkdir for them
        for name in ("proc", "sys", "dev", "tmp", "run", "var/log", "var/run", "mnt"):
            cpio.add_dir(name)
        cpio.add_dir("etc/acpi/PWRF")
        cpio.add_dir("root", 0o700)
        cpio.add_dir("root/.ssh", 0o700)
        cpio.add_chardev("dev/console", 5, 1, 0o600)
        cpio.add_chardev("dev/null", 1, 3, 0o666)
        cpio.add_bytes("init", init_text.encode(), 0o755)
        module_list = "".join(f"{guest_path(rel)}\n" for rel in plan.load_order)
        cpio.add_bytes(MODULE_LIST_GUEST_PATH, module_list.encode())
        for group, order in groups.items():
            listing = "".join(f"{guest_path(rel)}\n" for rel in order)
            cpio.add_bytes(f"{ON_DEMAND_GUEST_DIR}/{group}", listing.encode())
        cpio.add_file(HOST_KEY_GUEST_PATH, host_key_file, 0o600)
        add_busybox(cpio, tree / "bin/busybox")
        for guest, src in binaries.items():
            cpio.add_file(guest, src, 0o755)
        cpio.add_symlink("usr/lib/sftp-server", "openssh/sftp-server")
        for guest, src in sorted(libraries.items()):
            cpio.add_file(guest, src, 0o755 if "/ld-linux" in guest else 0o644)
        for src, guest in modules:
            if src.name.endswith(".ko"):
                cpio.add_file(guest, src, 0o644)
            else:
                cpio.add_bytes(guest, module_bytes(src), 0o644)
        cpio.add_bytes(COMPLETE_GUEST_PATH, b"")
        members = cpio.members
    return {
        "initrd_members": members,
        "host_libraries": host_libraries,
        "host_library_bytes": sum(Path(p).stat().st_size for p in host_libraries),
    }
