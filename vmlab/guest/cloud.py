"""Bring your own guest: cloud images from a path or a URL, per-guest overlays, guest facts.

A cloud image (a qcow2 or raw disk with cloud-init, or a vmlab rootfs base) is a *base*: it is
never written. Each guest boots a copy-on-write qcow2 overlay made with
``qemu-img create -f qcow2 -b BASE -F FMT overlay``; QEMU opens the base read-only through the
overlay's backing chain, so many guests can share one base.

URLs are downloaded with urllib into ``<cache>/cloud-images/<sha256 of the URL>/<file name>``
through a ``.part`` file renamed into place, and verified against the given sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab import paths
from vmlab.errors import CommandError, GuestError, HostError, SpecError
from vmlab.guest.ssh import GuestSSH
from vmlab.resources import template_file

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole file
CHUNK = 1 << 20
QEMU_IMG_TIMEOUT_S = 120.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.match(value):
        raise SpecError(
            f"not a sha256 checksum: {sha256!r}", hint="give 64 hex digits (sha256sum's output)"
        )
    return value


def _verify(path: Path, expected: str | None, *, source: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise HostError(
            f"{source}: sha256 {actual} does not match the expected {expected}",
            hint="the file is corrupt or not the image you meant: check the checksum and source",
        )


def _cache_dir(cache_root: Path | None) -> Path:
    return (cache_root if cache_root is not None else paths.cache_dir()) / "cloud-images"


def resolve_cloud_image(
    source: str,
    *,
    sha256: str | None,
    cache_root: Path | None = None,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """The local file of a cloud image: a path as is (verified if ``sha256`` is given), or a
    http(s)/file URL downloaded once into the cache and verified (a cached file that no longer
    matches is downloaded again)."""
    expected = _normalize_sha256(sha256)
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme not in ("http", "https", "file"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise HostError(
                f"cloud image {source} does not exist (or is not a file)",
                hint="give the path of a qcow2/raw disk image, or an http(s):// URL",
            )
        _verify(path, expected, source=str(path))
        return path.resolve()

    name = Path(urllib.parse.unquote(parsed.path)).name or "image"
    if not re.fullmatch(r"[A-Za-z0-9._+-]{1,200}", name):
        name = "image"
    target_dir = _cache_dir(cache_root) / hashlib.sha256(source.encode()).hexdigest()[:16]
    target = target_dir / name
    if target.is_file():
        if expected is None or sha256_file(target) == expected:
            log.info("cloud image %s is cached in %s", source, target)
            return target
        log.warning("cached %s does not match its sha256; downloading it again", target)
        target.unlink()
    target_dir.mkdir(parents=True, exist_ok=True)
    part = target_dir / f".{name}.{os.getpid()}.part"
    digest = hashlib.sha256()
    started = time.monotonic()
    try:
        request = urllib.request.Request(source, headers={"User-Agent": "vmlab"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response, part.open("wb") as out:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0)
            got = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                got += len(chunk)
            if total and got != total:
                raise HostError(
                    f"download of {source} stopped after {got} of {total} bytes",
                    hint="retry; check the network path to the server",
                )
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise HostError(
                f"{source}: downloaded sha256 {actual} does not match the expected {expected}",
                hint="the server sent another file: check the URL and the checksum",
            )
        part.replace(target)
    except urllib.error.HTTPError as exc:
        raise HostError(
            f"cannot download {source}: HTTP {exc.code} {exc.reason}",
            hint="check the URL (the image may have moved or been removed)",
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HostError(
            f"cannot download {source}: {reason}",
            hint="check the URL and network access, or download the image and give its path",
        ) from exc
    finally:
        part.unlink(missing_ok=True)
    log.info(
        "downloaded %s (%d bytes) in %.1f s", source, target.stat().st_size,
        time.monotonic() - started,
    )  # fmt: skip
    if expected is None:
        log.warning("%s was downloaded without a sha256 to check (got %s)", source, actual)
    return target


@dataclass(frozen=True)
class ImageInfo:
    format: str  # qcow2 | raw | ...
    virtual_size: int
    backing_file: str | None


def _qemu_img(argv: list[str], *, hint: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["qemu-img", *argv],
            capture_output=True,
            text=True,
            timeout=QEMU_IMG_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HostError("qemu-img is missing", hint="apt-get install qemu-utils") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"qemu-img did not finish within {QEMU_IMG_TIMEOUT_S:.0f} s",
            argv=["qemu-img", *argv],
            returncode=None,
            hint=hint,
        ) from exc
    if proc.returncode != 0:
        raise CommandError(
            "qemu-img failed",
            argv=["qemu-img", *argv],
            returncode=proc.returncode,
            output=proc.stdout + proc.stderr,
            hint=hint,
        )
    return proc


def image_info(path: Path) -> ImageInfo:
    """qemu-img info of a disk image (format detected by qemu-img, with --force-share so a
    running guest's lock does not stop it)."""
    proc = _qemu_img(
        ["info", "--force-share", "--output=json", str(path)],
        hint=f"is {path} a disk image qemu-img can read?",
    )
    data = json.loads(proc.stdout)
    return ImageInfo(
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        backing_file=data.get("backing-filename"),
    )


def make_overlay(
    base: Path, dest: Path, *, base_format: str | None = None, size: int | None = None
) -> Path:
    """A qcow2 overlay at ``dest`` backed by ``base`` (absolute path, explicit backing format:
    QEMU refuses to probe it). ``size`` in bytes may grow the disk (never shrink it)."""
    base = base.resolve()
    if not base.is_file():
        raise HostError(f"base image {base} does not exist", hint="build or download it first")
    fmt = base_format or image_info(base).format
    if fmt not in ("qcow2", "raw"):
        raise HostError(
            f"base image {base} is {fmt}; overlays are made on qcow2 or raw bases",
            hint=f"convert it: qemu-img convert -O qcow2 {base} base.qcow2",
        )
    if dest.exists():
        raise HostError(f"overlay {dest} already exists", hint="use a fresh per-guest path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    argv = ["create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(dest)]
    if size is not None:
        argv.append(str(size))
    _qemu_img(argv, hint="check the base image and free space where the overlay goes")
    log.debug("overlay %s on %s (%s)", dest, base, fmt)
    return dest


@dataclass(frozen=True)
class GuestDisk:
    device: str  # /dev/vdb
    serial: str | None
    queues: int | None
    pci: str | None


@dataclass(frozen=True)
class GuestFacts:
    kernel: str
    distro: str
    fio: str
    cpus: int | None
    memory_kib: int | None
    disks: tuple[GuestDisk, ...]
    raw: str

    def by_serial(self, serial: str) -> GuestDisk:
        found = [d for d in self.disks if d.serial == serial]
        if len(found) != 1:
            have = ", ".join(f"{d.device} ({d.serial or d.pci})" for d in self.disks) or "none"
            raise GuestError(
                f"{'several disks have' if found else 'no disk has'} serial {serial!r}; "
                f"the guest has: {have}",
                hint="the guest kernel may lack the driver for this device model",
            )
        return found[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "distro": self.distro,
            "fio": self.fio,
            "cpus": self.cpus,
            "memory_kib": self.memory_kib,
            "disks": {
                d.device: {"serial": d.serial, "queues": d.queues, "pci": d.pci} for d in self.disks
            },
        }


def _int_or_none(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def parse_facts(text: str) -> GuestFacts:
    """Parse what templates/guest/facts.sh prints."""
    fields: dict[str, str] = {}
    disks: list[GuestDisk] = []
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "disk":
            parts = rest.split()
            if len(parts) >= 2:
                disks.append(
                    GuestDisk(
                        device=parts[1],
                        serial=None if parts[0] == "-" else parts[0],
                        queues=_int_or_none(parts[2]) if len(parts) > 2 else None,
                        pci=parts[3] if len(parts) > 3 and parts[3] != "-" else None,
                    )
                )
        elif key:
            fields[key] = rest.strip()
    return GuestFacts(
        kernel=fields.get("kernel", ""),
        distro=fields.get("distro", "unknown"),
        fio=fields.get("fio", "missing"),
        cpus=_int_or_none(fields.get("cpus", "")),
        memory_kib=_int_or_none(fields.get("memory_kib", "")),
        disks=tuple(disks),
        raw=text,
    )


def collect_facts(ssh: GuestSSH, *, timeout_s: float = 60) -> GuestFacts:
    """Run templates/guest/facts.sh in the guest through ``sh -s`` (stdin: no SFTP needed, any
    POSIX sh: busybox ash, dash, bash) and parse it."""
    script = template_file("guest/facts.sh").read_bytes()
    result = ssh.run("sh -s", stdin=script, timeout_s=timeout_s, check=False)
    if result.exit_code != 0:
        err = result.stderr.decode(errors="replace").strip()[-400:]
        raise GuestError(f"{ssh.where}: the facts script exited {result.exit_code}: {err}")
    return parse_facts(result.text)


def remove_overlay(path: Path) -> None:
    """Delete a per-guest overlay (never its base)."""
    if path.is_file():
        path.unlink()
