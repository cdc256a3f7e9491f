"""Bring your own guest: cloud images from a path or a URL, per-guest overlays.

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
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vmlab import paths, proc
from vmlab.errors import HostError, SpecError
from vmlab.guest.image.cache import sha256_file

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole file
CHUNK = 1 << 20
QEMU_IMG_TIMEOUT_S = 120.0
QEMU_IMG_HINT = "apt-get install qemu-utils"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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


def image_info(path: Path) -> ImageInfo:
    """qemu-img info of a disk image (format detected by qemu-img, with --force-share so a
    running guest's lock does not stop it)."""
    info = proc.run(
        ["qemu-img", "info", "--force-share", "--output=json", path],
        timeout_s=QEMU_IMG_TIMEOUT_S,
        hint=f"is {path} a disk image qemu-img can read?",
        missing_hint=QEMU_IMG_HINT,
    )
    data = json.loads(info.stdout)
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
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(dest)]
    if size is not None:
        argv.append(str(size))
    proc.run(
        argv,
        timeout_s=QEMU_IMG_TIMEOUT_S,
        hint="check the base image and free space where the overlay goes",
        missing_hint=QEMU_IMG_HINT,
    )
    log.debug("overlay %s on %s (%s)", dest, base, fmt)
    return dest
