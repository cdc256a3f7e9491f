"""The build cache the default image and the rootfs images share.

An image lives in ``<cache>/<kind>/<key>/`` (``images`` for the default guest, ``rootfs`` for
the root-disk guests) next to ``<cache>/debs``, the downloaded packages. The key hashes every
input of a build (:func:`compute_key`), so an image is valid for as long as its inputs are.
A build holds a per-key lock, fills a temporary ``.build-<key>-*`` directory and renames it into
place (:func:`fresh_build`): a reader sees a complete image or none, and a killed build leaves
only a temporary directory the next build of that key removes. ``manifest.json`` is written
last; a loader checks its format, its key and the sizes of the files it names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vmlab import paths
from vmlab.errors import HostError
from vmlab.proc import Deadline

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
T = TypeVar("T")


def note(progress: ProgressFn | None, message: str) -> None:
    """Log a build step and tell the caller's progress callback (the CLI prints it)."""
    log.info("%s", message)
    if progress is not None:
        progress(message)


def kind_dir(cache_root: Path | None, kind: str) -> Path:
    """``<cache>/<kind>``, the cache being ``cache_root`` or vmlab's default."""
    return (cache_root if cache_root is not None else paths.cache_dir()) / kind


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def compute_key(material: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the inputs, as canonical JSON."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_manifest(root: Path, format_version: int) -> dict[str, Any] | None:
    """``root/manifest.json`` if it is of this format and names ``root``'s key, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("format") != format_version or manifest.get("key") != root.name:
        return None
    return manifest


def sizes_match(manifest: Mapping[str, Any], files: Iterable[tuple[Path, str]]) -> bool:
    """Each (file, size key) exists with the size the manifest's ``sizes`` recorded."""
    sizes = manifest.get("sizes", {})
    return all(path.is_file() and path.stat().st_size == sizes.get(key) for path, key in files)


@contextlib.contextmanager
def locked(lock_file: Path, *, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file``; HostError after ``timeout_s`` of waiting."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as f:
        deadline = Deadline(timeout_s)
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline.expired():
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


def install(work: Path, final: Path) -> None:
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


@contextlib.contextmanager
def fresh_build(
    top: Path, key: str, *, release: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """A new ``top/.build-<key>-*`` directory to build into, installed as ``top/key`` when the
    block ends normally and removed on every path. Call it holding the key's :func:`locked`:
    it first removes what killed builds of the key left. ``release`` runs before a directory
    is removed (the rootfs build unmounts what mmdebstrap may have left mounted in it)."""
    for pattern in (f".build-{key}-*", f".old-{key}-*"):
        for stale in top.glob(pattern):  # left by killed builds (we hold the lock)
            if release is not None:
                release(stale)
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=top))
    work.chmod(0o755)  # readable by a QEMU running as another user (libvirt)
    try:
        yield work
        install(work, top / key)
    finally:
        if release is not None:
            release(work)
        shutil.rmtree(work, ignore_errors=True)


def load_built(final: Path, load: Callable[[Path], T | None], what: str) -> T:
    """The image just installed in ``final``; HostError if it does not load."""
    image = load(final)
    if image is None:
        raise HostError(
            f"the {what} in {final} is incomplete right after building it",
            hint=f"remove {final} and build again",
        )
    return image
