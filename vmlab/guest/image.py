"""Build the default guest: Debian's cloud kernel plus an initramfs written in pure Python.

The initramfs (newc cpio, uncompressed) holds busybox-static, dropbear with sftp-server, fio with
every shared library ``ldd`` reports, and the virtio/SCSI/NVMe/ACPI-button modules in
``.modinfo depends=`` order. Packages come from ``apt-get download`` + ``dpkg -x`` into the cache;
nothing is installed on the host and no root is needed. Libraries that are not in those packages
(fio's ~80 MB, libc, ...) are copied from the host, which must run the same Debian release.

Images live in ``<cache>/images/<key>/``; the key hashes every input (exact .deb versions and
checksums, the rendered init script, the module list, the kernel command line, the versions of the
host packages the copied libraries come from, :data:`FORMAT_VERSION`). A build happens in a
temporary directory that is renamed into place, under a per-key lock.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import lz4.block  # type: ignore[import-untyped]

from vmlab import paths, proc, resources
from vmlab.errors import CommandError, HostError
from vmlab.guest.cpio import NewcWriter

log = logging.getLogger(__name__)
BZIMAGE = "vmlinuz"  # the kernel as Debian ships it (a bzImage), kept in every image

FORMAT_VERSION = 1
READY_MARKER = "VMLAB-READY"
FAILED_MARKER = "VMLAB-INIT-FAILED"
USER = "root"
HOSTNAME = "vmlab"
DEFAULT_IP = "10.0.2.15/24"  # QEMU user-mode networking's guest address ...
DEFAULT_GW = "10.0.2.2"  # ... and its gateway
MIN_MEMORY_MIB = 384
BASE_CMDLINE = "console=ttyS0 quiet panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
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
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "virtio_net",
    "button",
    "evdev",
    "virtio_rng",
)
MULTIARCH = "x86_64-linux-gnu"
INIT_TEMPLATE = "guest/init.sh.j2"
HOST_KEY_GUEST_PATH = "/etc/dropbear/dropbear_ed25519_host_key"
MODULE_LIST_GUEST_PATH = "/etc/vmlab/modules"
COMPLETE_GUEST_PATH = "/etc/vmlab/complete"  # the initramfs' last member
LOCK_TIMEOUT_S = 900.0

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    root: Path  # the image dir
    key: str  # cache key
    kernel: Path  # what to pass to -kernel (vmlinux if PVH-capable else bzImage)
    initrd: Path
    cmdline: str  # base kernel cmdline, without vmlab.authkey
    ready_marker: str
    failed_marker: str
    host_key: str  # "ssh-ed25519 AAAA..." public line of the guest's host key, for pinning
    user: str
    kernel_version: str
    fio_version: str
    min_memory_mib: int


@dataclass(frozen=True)
class DebRecord:
    """One package as apt resolved it (the candidate version)."""

    package: str
    version: str
    filename: str  # pool path, e.g. pool/main/f/fio/fio_3.33-3_amd64.deb
    sha256: str
    size: int
    depends: str

    @property
    def deb_name(self) -> str:
        return PurePosixPath(self.filename).name

    def depends_names(self) -> list[str]:
        """Package names of Depends (first alternative of each), without versions."""
        names = []
        for clause in self.depends.split(","):
            first = clause.split("|")[0].strip()
            if first:
                names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
        return names


@dataclass(frozen=True)
class ModulePlan:
    """Kernel modules to insmod, dependencies first, and the needed ones built into the kernel."""

    load_order: tuple[str, ...]  # paths relative to /lib/modules/<kver>/, e.g. kernel/…/x.ko
    builtin: tuple[str, ...]  # module names


# --- small helpers ---------------------------------------------------------------------------


def _note(progress: ProgressFn | None, message: str) -> None:
    log.info("%s", message)
    if progress is not None:
        progress(message)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _usrmerge(path: str) -> str:
    """Debian 12 is merged-/usr: /lib/x → /usr/lib/x (the guest has /lib → usr/lib)."""
    for top in ("bin", "sbin", "lib", "lib64"):
        if path == f"/{top}" or path.startswith(f"/{top}/"):
            return f"/usr{path}"
    return path


# --- apt: resolve, download, extract ---------------------------------------------------------

_APT_HINT = "run `apt-get update` (as root) so apt knows the Debian 12 package lists"
_DEBIAN_HINT = "build the guest on a Debian 12 host: it uses apt and dpkg and copies libraries"
# A program of the extracted packages that is not where it used to be.
_LAYOUT_HINT = "the Debian package layout changed: vmlab.guest.image needs an update"


def _parse_records(text: str) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            current[last] = value.strip()
    if current:
        records.append(current)
    return records


def _apt_show(specs: Sequence[str]) -> list[DebRecord]:
    argv = ["apt-cache", "show", "--no-all-versions", *specs]
    try:
        shown = proc.run(argv, timeout_s=60, hint=_APT_HINT, missing_hint=_DEBIAN_HINT)
    except CommandError as exc:
        raise HostError(
            f"apt cannot resolve {', '.join(specs)}: {exc.output.strip()}", hint=_APT_HINT
        ) from exc
    found: dict[str, DebRecord] = {}
    for rec in _parse_records(shown.out):
        name = rec.get("Package", "")
        if name in found or not rec.get("Filename"):
            continue  # an installed-only record (no lists) has no Filename
        found[name] = DebRecord(
            package=name,
            version=rec.get("Version", ""),
            filename=rec["Filename"],
            sha256=rec.get("SHA256", ""),
            size=int(rec.get("Size", "0") or 0),
            depends=rec.get("Depends", "") + ", " + rec.get("Pre-Depends", ""),
        )
    result = []
    for spec in specs:
        name = spec.split("=", 1)[0]
        if name not in found:
            raise HostError(f"apt has no downloadable candidate for {spec}", hint=_APT_HINT)
        result.append(found[name])
    return result


def resolve_packages() -> list[DebRecord]:
    """The exact packages of the guest: the versioned cloud kernel (from the metapackage's
    Depends) first, then :data:`USERLAND_PACKAGES`."""
    (meta,) = _apt_show([KERNEL_METAPACKAGE])
    match = re.search(r"(linux-image-[^\s,(]+)\s*\(=\s*([^)\s]+)\)", meta.depends)
    if match is None:
        match = re.search(r"(linux-image-[^\s,(]+)", meta.depends)
        if match is None:
            raise HostError(
                f"{KERNEL_METAPACKAGE} {meta.version} depends on no linux-image package "
                f"({meta.depends!r})",
                hint="check the apt sources: the guest needs Debian 12's cloud kernel",
            )
        kernel_spec = match.group(1)
    else:
        kernel_spec = f"{match.group(1)}={match.group(2)}"
    return _apt_show([kernel_spec, *USERLAND_PACKAGES])


def _host_library_packages(records: Sequence[DebRecord]) -> dict[str, str]:
    """Installed versions of the host packages the copied libraries come from (direct
    Depends of the downloaded packages that are not downloaded themselves, and libc6)."""
    downloaded = {r.package for r in records}
    userland = [r for r in records if not r.package.startswith("linux-image-")]
    names = sorted({"libc6"} | {n for r in userland for n in r.depends_names()} - downloaded)
    # Exits 1 when a package is not installed; those stay "missing".
    query = proc.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${Status}\n", *names],
        timeout_s=60,
        check=False,
        missing_hint=_DEBIAN_HINT,
    )
    versions = dict.fromkeys(names, "missing")
    for line in query.out.splitlines():
        pkg, _, rest = line.partition("\t")
        version, _, status = rest.partition("\t")
        if pkg in versions and status.endswith(" installed"):
            versions[pkg] = version
    return versions


def _fetch_debs(
    records: Sequence[DebRecord], debs_dir: Path, progress: ProgressFn | None
) -> dict[str, Path]:
    """Each record's .deb in ``debs_dir`` (checksum-verified), downloading the missing ones."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    missing: list[DebRecord] = []
    for rec in records:
        target = debs_dir / rec.deb_name
        if target.is_file() and (not rec.sha256 or _sha256_file(target) == rec.sha256):
            result[rec.package] = target
        else:
            missing.append(rec)
    if not missing:
        return result
    for stale in debs_dir.glob(".download-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
    total_mb = sum(r.size for r in missing) / 1e6
    _note(progress, f"downloading {len(missing)} packages ({total_mb:.1f} MB)")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs_dir))
    try:
        argv = ["apt-get", "download"]
        if os.geteuid() == 0:
            argv += ["-o", "APT::Sandbox::User=root"]  # _apt cannot write into our dir
        argv += [f"{r.package}={r.version}" for r in missing]
        try:
            proc.run(argv, cwd=tmp, timeout_s=900, missing_hint=_DEBIAN_HINT)
        except CommandError as exc:
            if re.search(r"Can't find a source|Unable to locate|No packages found", exc.output):
                raise HostError(
                    f"apt-get download failed: {exc.output.strip()}", hint=_APT_HINT
                ) from exc
            exc.hint = "check network access to the Debian mirror, then retry"
            raise
        for rec in missing:
            got = sorted(tmp.glob(f"{rec.package}_*.deb"))
            if len(got) != 1:
                raise HostError(
                    f"apt-get download left {len(got)} files for {rec.package} in {tmp}",
                    hint=_APT_HINT,
                )
            if rec.sha256 and _sha256_file(got[0]) != rec.sha256:
                raise HostError(
                    f"{got[0].name}: SHA256 does not match apt's record",
                    hint="run `apt-get update` and retry (the mirror changed under us)",
                )
            target = debs_dir / rec.deb_name
            got[0].replace(target)
            result[rec.package] = target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# --- kernel modules --------------------------------------------------------------------------


def _read_module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    name = path.name
    if name.endswith(".ko"):
        return data
    if name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if name.endswith(".ko.zst"):
        return proc.run(
            ["zstd", "-dc"], input_bytes=data, timeout_s=60, missing_hint="apt-get install zstd"
        ).stdout
    raise HostError(f"unknown kernel module compression: {path}")


def _elf_sections(elf: bytes) -> dict[str, bytes]:
    """Section name → contents of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = []
    for i in range(shnum):
        _name, sh_type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        headers.append((_name, sh_type, offset, size))
    _n, _t, str_off, str_size = headers[shstrndx]
    strtab = elf[str_off : str_off + str_size]
    sections = {}
    for name_off, sh_type, offset, size in headers:
        name = strtab[name_off : strtab.index(b"\0", name_off)].decode()
        sections[name] = b"" if sh_type == 8 else elf[offset : offset + size]  # 8: NOBITS
    return sections


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The ``.modinfo`` key=value strings of a module (.ko, .ko.xz, .ko.gz, .ko.zst)."""
    try:
        sections = _elf_sections(_read_module_bytes(path))
    except (ValueError, struct.error, lzma.LZMAError, OSError) as exc:
        raise HostError(f"cannot read kernel module {path}: {exc}") from exc
    info: dict[str, list[str]] = {}
    for raw in sections.get(".modinfo", b"").split(b"\0"):
        key, sep, value = raw.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def module_name(path: str | Path) -> str:
    """'kernel/lib/crc-t10dif.ko.xz' → 'crc_t10dif' (the kernel's spelling)."""
    name = PurePosixPath(str(path)).name
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Sequence[str]) -> ModulePlan:
    """Order ``wanted`` and their ``depends=`` (and existing ``softdep=pre:``) modules so that
    every module comes after what it needs; skip those listed in ``modules.builtin``."""
    builtin_file = moddir / "modules.builtin"
    builtin = (
        {module_name(line.strip()) for line in builtin_file.read_text().splitlines() if line}
        if builtin_file.is_file()
        else set()
    )
    files: dict[str, Path] = {}
    for path in sorted(moddir.rglob("*.ko*")):
        if re.search(r"\.ko(\.(xz|gz|zst))?$", path.name):
            files.setdefault(module_name(path), path)

    order: list[str] = []
    done: set[str] = set()
    builtin_hit: list[str] = []

    def visit(name: str, chain: tuple[str, ...], *, required: bool) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in chain:
            raise HostError(f"kernel module dependency cycle: {' → '.join((*chain, name))}")
        if name in builtin:
            done.add(name)
            builtin_hit.append(name)
            return
        if name not in files:
            if required:
                raise HostError(
                    f"kernel module {name} (needed by {' → '.join(chain) or 'the guest'}) is "
                    f"neither in {moddir} nor built in",
                    hint="the guest kernel package changed: update vmlab.guest.image.MODULES",
                )
            return
        info = read_modinfo(files[name])
        for dep in (d for v in info.get("depends", []) for d in v.split(",") if d):
            visit(dep, (*chain, name), required=True)
        for soft in info.get("softdep", []):
            pre = re.search(r"pre:\s*(.*?)(\s+post:|$)", soft)
            for dep in pre.group(1).split() if pre else []:
                visit(dep, (*chain, name), required=False)
        done.add(name)
        order.append(files[name].relative_to(moddir).as_posix())

    for name in wanted:
        visit(name, (), required=True)
    return ModulePlan(load_order=tuple(order), builtin=tuple(builtin_hit))


# --- kernel: bzImage → vmlinux, PVH note -----------------------------------------------------


def _decompress_lz4_legacy(payload: bytes) -> bytes:
    """The kernel's LZ4 "legacy" format: blocks of at most 8 MiB after a magic, then the
    uncompressed size the kernel's build appends (the caller checks it)."""
    out = []
    pos = 4  # after the magic 02 21 4c 18
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if size == 0x184C2102:
            continue  # concatenated frame
        if pos + size > len(payload):
            break  # the trailing size word
        out.append(lz4.block.decompress(payload[pos : pos + size], uncompressed_size=8 << 20))
        pos += size
    return b"".join(out)


def _decompress_zstd(payload: bytes) -> bytes | None:
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if shutil.which("zstd") is None:
            return None
        return (
            proc.run(["zstd", "-dc"], input_bytes=payload, timeout_s=120, check=False).stdout
            or None
        )
    out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    return out


def _decompress_payload(payload: bytes) -> bytes | None:
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    if payload.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _decompress_zstd(payload)
    if payload.startswith(b"\x02\x21\x4c\x18"):
        return _decompress_lz4_legacy(payload)
    log.info("vmlinux: unknown kernel payload compression %s", payload[:6].hex())
    return None


_PAYLOAD_MAGICS = (b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18")


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF inside a bzImage, or None if it cannot be decompressed here.

    The setup header (boot protocol >= 2.08) says where the payload is, and the kernel's build
    appends the uncompressed size to it, which checks the result. Without such a header the
    first known compression magic is tried.
    """
    candidates: list[tuple[bytes, int | None]] = []
    if bzimage[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bzimage, 0x206)[0] >= 0x208:
        setup_sects = bzimage[0x1F1] or 4
        start = (setup_sects + 1) * 512
        offset, length = struct.unpack_from("<II", bzimage, 0x248)
        payload = bzimage[start + offset : start + offset + length]
        if length >= 8 and len(payload) == length:
            candidates.append((payload, struct.unpack_from("<I", payload, length - 4)[0]))
    if not candidates:
        for magic in _PAYLOAD_MAGICS:
            if (at := bzimage.find(magic)) >= 0:
                candidates.append((bzimage[at:], None))
    for payload, expected in candidates:
        try:
            elf = _decompress_payload(payload)
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
            log.debug("vmlinux: payload did not decompress: %s", exc)
            continue
        if elf and elf[:4] == b"\x7fELF" and expected in (None, len(elf)):
            return elf
        log.debug("vmlinux: payload gave %d bytes, expected %s", len(elf or b""), expected)
    return None


XEN_ELFNOTE_PHYS32_ENTRY = 18


def pvh_entry(elf: bytes) -> int | None:
    """The PVH entry point (ELF note "Xen" type 18), or None if the kernel cannot boot PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return None
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            desc_at = pos + 12 + ((namesz + 3) & ~3)
            desc = elf[desc_at : desc_at + descsz]
            pos = desc_at + ((descsz + 3) & ~3)
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                value = int.from_bytes(desc, "little")
                if value:
                    return value
    return None


# --- userland: ldd closure, host key ---------------------------------------------------------


def _lib_dirs(tree: Path) -> list[Path]:
    return [tree / "usr/lib" / MULTIARCH, tree / "lib" / MULTIARCH]


def ldd_closure(binary: Path, tree: Path) -> dict[str, Path]:
    """Guest path → file to copy, for every shared object ``binary`` loads: libraries from the
    extracted ``tree`` first (LD_LIBRARY_PATH), then the host's."""
    done = proc.run(
        ["ldd", binary],
        env=_tree_env(tree),
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
        try:
            guest = "/" + seen.relative_to(tree).as_posix()
        except ValueError:
            guest = _usrmerge(os.path.normpath(str(seen)))
        libs[guest] = seen.resolve()
    return libs


def _tree_env(tree: Path) -> dict[str, str]:
    """Environment to run a binary of the extracted tree on the host."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LD_LIBRARY_PATH": ":".join(str(d) for d in _lib_dirs(tree)),
    }


def generate_host_key(tree: Path, key_file: Path) -> str:
    """An ed25519 host key made by the extracted dropbearkey; returns 'ssh-ed25519 AAAA...'."""
    dropbearkey, env = str(tree / "usr/bin/dropbearkey"), _tree_env(tree)
    proc.run(
        [dropbearkey, "-t", "ed25519", "-f", key_file],
        env=env,
        timeout_s=60,
        missing_hint=_LAYOUT_HINT,
    )
    public = proc.run(
        [dropbearkey, "-y", "-f", key_file], env=env, timeout_s=60, missing_hint=_LAYOUT_HINT
    )
    for line in public.out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise HostError(f"dropbearkey -y printed no ssh-ed25519 line for {key_file}")


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


# --- init template and the cache key --------------------------------------------------------


def render_init() -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resources.templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders a shell script, not markup
    )
    return env.get_template(INIT_TEMPLATE).render(
        ready_marker=READY_MARKER,
        failed_marker=FAILED_MARKER,
        hostname=HOSTNAME,
        default_ip=DEFAULT_IP,
        default_gw=DEFAULT_GW,
        complete_path=COMPLETE_GUEST_PATH,
        modules_path=MODULE_LIST_GUEST_PATH,
        host_key_path=HOST_KEY_GUEST_PATH,
        min_memory_mib=MIN_MEMORY_MIB,
    )


def key_material(
    records: Sequence[DebRecord], init_text: str, host_packages: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "packages": [[r.package, r.version, r.filename, r.sha256] for r in records],
        "init_sha256": hashlib.sha256(init_text.encode()).hexdigest(),
        "modules": list(MODULES),
        "cmdline": BASE_CMDLINE,
        "host_packages": dict(sorted(host_packages.items())),
        "min_memory_mib": MIN_MEMORY_MIB,
    }


def compute_key(material: Mapping[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- cached images ---------------------------------------------------------------------------


def _images_dir(cache_root: Path | None) -> Path:
    return (cache_root if cache_root is not None else paths.cache_dir()) / "images"


def _load(root: Path) -> GuestImage | None:
    """The image in ``root`` if it is complete and of this builder's format."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != root.name:
            return None
        image = GuestImage(
            root=root,
            key=manifest["key"],
            kernel=root / manifest["kernel"],
            initrd=root / manifest["initrd"],
            cmdline=manifest["cmdline"],
            ready_marker=manifest["ready_marker"],
            failed_marker=manifest["failed_marker"],
            host_key=manifest["host_key"],
            user=manifest["user"],
            kernel_version=manifest["kernel_version"],
            fio_version=manifest["fio_version"],
            min_memory_mib=int(manifest["min_memory_mib"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sizes = manifest.get("sizes", {})
    for path, size_key in ((image.kernel, "kernel_bytes"), (image.initrd, "initrd_bytes")):
        if not path.is_file() or path.stat().st_size != sizes.get(size_key):
            return None
    return image


def find_image(cache_root: Path | None = None) -> GuestImage | None:
    """The newest complete cached image; never builds, never asks apt."""
    images = _images_dir(cache_root)
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


@contextlib.contextmanager
def _locked(lock_file: Path, *, timeout_s: float) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HostError(
                        f"another vmlab process has been building {lock_file.parent} for "
                        f"more than {timeout_s:.0f} s",
                        hint=f"wait for it, or remove {lock_file} if no build is running",
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the build -------------------------------------------------------------------------------


def build_image(
    cache_root: Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GuestImage:
    """The cached image for the current inputs, building it first if needed (or if ``force``)."""
    cache = cache_root if cache_root is not None else paths.cache_dir()
    images = _images_dir(cache)
    _note(progress, "resolving guest packages with apt")
    records = resolve_packages()
    init_text = render_init()
    material = key_material(records, init_text, _host_library_packages(records))
    key = compute_key(material)
    final = images / key
    if not force and (image := _load(final)) is not None:
        _note(progress, f"guest image {key} is cached in {final}")
        return image
    with _locked(images / f".lock-{key}", timeout_s=LOCK_TIMEOUT_S):
        if not force and (image := _load(final)) is not None:
            return image  # a concurrent build finished while we waited
        for pattern in (f".build-{key}-*", f".old-{key}-*"):
            for stale in images.glob(pattern):  # left by killed builds (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        debs = _fetch_debs(records, cache / "debs", progress)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=images))
        work.chmod(0o755)  # readable by a QEMU running as another user (libvirt)
        try:
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
            _install(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    image = _load(final)
    if image is None:
        raise HostError(
            f"the guest image in {final} is incomplete right after building it",
            hint=f"remove {final} and build again",
        )
    _note(progress, f"guest image {key} built in {time.monotonic() - started:.1f} s: {final}")
    return image


def _install(work: Path, final: Path) -> None:
    """Rename the finished build into place; an old image of the same key goes away after."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
        final.rename(old)
    try:
        work.rename(final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _prepare_kernel(work: Path, bzimage_src: Path) -> tuple[str, str, str]:
    """Copy the bzImage to ``work/vmlinuz``; also write ``work/vmlinux`` if it boots PVH.
    Returns (file to boot, kind, note)."""
    bzimage = bzimage_src.read_bytes()
    (work / BZIMAGE).write_bytes(bzimage)
    vmlinux = extract_vmlinux(bzimage)
    if vmlinux is None:
        return BZIMAGE, "bzImage", "could not decompress the bzImage payload here"
    entry = pvh_entry(vmlinux)
    if entry is None:
        return BZIMAGE, "bzImage", "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
    (work / "vmlinux").write_bytes(vmlinux)
    return "vmlinux", "vmlinux-pvh", f"PVH entry {entry:#x}"


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
    _note(progress, f"extracting {len(records)} packages")
    for rec in records:
        proc.run(["dpkg", "-x", debs[rec.package], tree], timeout_s=300, missing_hint=_DEBIAN_HINT)

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
    _note(progress, "preparing the kernel")
    kernel_file, kernel_kind, kernel_note = _prepare_kernel(work, bzimage_src)
    _note(progress, "generating the guest's ssh host key")
    host_key_file = work / "host_key"
    host_key = generate_host_key(tree, host_key_file)
    fio = proc.run(
        [tree / "usr/bin/fio", "--version"],
        env=_tree_env(tree),
        timeout_s=60,
        missing_hint=_LAYOUT_HINT,
    )

    _note(progress, "writing the initramfs")
    (work / "init.sh").write_text(init_text)
    content = _write_initramfs(
        work / "initrd.img",
        tree=tree,
        moddir=moddir,
        plan=plan,
        init_text=init_text,
        host_key_file=host_key_file,
    )
    host_key_file.unlink()
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
        "initrd": "initrd.img",
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
        },
        "build_time_s": round(time.monotonic() - started, 2),
        "sizes": {
            "kernel_bytes": (work / kernel_file).stat().st_size,
            "bzimage_bytes": (work / BZIMAGE).stat().st_size,
            "vmlinux_bytes": (work / "vmlinux").stat().st_size if kernel_file == "vmlinux" else 0,
            "initrd_bytes": (work / "initrd.img").stat().st_size,
            **content,
        },
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _write_initramfs(
    out: Path,
    *,
    tree: Path,
    moddir: Path,
    plan: ModulePlan,
    init_text: str,
    host_key_file: Path,
) -> dict[str, Any]:
    """The initramfs: merged-/usr layout, /init, busybox + applets, dropbear, sftp-server, fio,
    their libraries, the modules (decompressed) and the list /init loads them from."""
    busybox = tree / "bin/busybox"
    applets = proc.run(
        [busybox, "--list-full"], timeout_s=30, missing_hint=_LAYOUT_HINT
    ).out.split()
    binaries = {
        "/usr/sbin/dropbear": tree / "usr/sbin/dropbear",
        "/usr/lib/openssh/sftp-server": tree / "usr/lib/openssh/sftp-server",
        "/usr/bin/fio": tree / "usr/bin/fio",
        "/usr/bin/iperf3": tree / "usr/bin/iperf3",
    }
    libraries: dict[str, Path] = {}
    for binary in binaries.values():
        libraries.update(ldd_closure(binary, tree))
    host_libraries = sorted(str(src) for src in libraries.values() if tree not in src.parents)
    guest_moddir = f"/usr/lib/modules/{moddir.name}"
    modules = [  # (source, guest path): compressed modules are stored decompressed
        (moddir / rel, re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", f"{guest_moddir}/{rel}"))
        for rel in plan.load_order
    ]

    with out.open("wb") as f, NewcWriter(f) as cpio:
        for top in ("bin", "sbin", "lib", "lib64"):
            cpio.add_dir(f"usr/{top}")
            cpio.add_symlink(top, f"usr/{top}")
        for name in ("proc", "sys", "dev", "tmp", "run", "var/log", "mnt"):
            cpio.add_dir(name)
        cpio.add_dir("root", 0o700)
        cpio.add_chardev("dev/console", 5, 1, 0o600)
        cpio.add_chardev("dev/null", 1, 3, 0o666)
        cpio.add_bytes("init", init_text.encode(), 0o755)
        module_list = "".join(f"{guest}\n" for _src, guest in modules)
        cpio.add_bytes(MODULE_LIST_GUEST_PATH, module_list.encode())
        cpio.add_file(HOST_KEY_GUEST_PATH, host_key_file, 0o600)
        cpio.add_file("usr/bin/busybox", busybox, 0o755)
        for applet in applets:
            guest = _usrmerge("/" + applet)
            if "/" in applet and guest not in cpio:
                cpio.add_symlink(guest, "/usr/bin/busybox")
        for guest, src in binaries.items():
            cpio.add_file(guest, src, 0o755)
        cpio.add_symlink("usr/lib/sftp-server", "openssh/sftp-server")
        for guest, src in sorted(libraries.items()):
            cpio.add_file(guest, src, 0o755 if "/ld-linux" in guest else 0o644)
        for src, guest in modules:
            if src.name.endswith(".ko"):
                cpio.add_file(guest, src, 0o644)
            else:
                cpio.add_bytes(guest, _read_module_bytes(src), 0o644)
        cpio.add_bytes(COMPLETE_GUEST_PATH, b"")
        members = cpio.members
    return {
        "initrd_members": members,
        "host_libraries": host_libraries,
        "host_library_bytes": sum(Path(p).stat().st_size for p in host_libraries),
    }
