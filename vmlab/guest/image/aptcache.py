"""apt's resolution of the default image's packages, kept until apt's state changes.

Finding the cached image needs its key, and the key needs the exact packages apt would pick:
two ``apt-cache show`` calls that take 2-5 s on a busy 2-core host, in every `vmlab bench`.
Their answer only changes when apt's package lists, dpkg's status or apt's configuration do
(``apt-get update``, an install, a new source), so it is kept with a fingerprint of those
files (path, size, mtime) and asked again when the fingerprint differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from vmlab.guest.image.debs import DebRecord
from vmlab.guest.image.recipe import KERNEL_METAPACKAGE, USERLAND_PACKAGES

log = logging.getLogger(__name__)

APT_STATE = (Path("/var/lib/apt/lists"), Path("/var/lib/dpkg/status"), Path("/etc/apt"))
FORMAT = 1


def apt_fingerprint(roots: Sequence[Path] = APT_STATE) -> str:
    """A digest of every file apt's answer depends on (and of what the image asks apt for)."""
    digest = hashlib.sha256(repr((FORMAT, KERNEL_METAPACKAGE, USERLAND_PACKAGES)).encode())
    for root in roots:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_resolve(
    cache_file: Path,
    resolve: Callable[[], list[DebRecord]],
    *,
    roots: Sequence[Path] = APT_STATE,
) -> list[DebRecord]:
    """``resolve()``'s answer, from ``cache_file`` while apt's state is as it was then."""
    key = apt_fingerprint(roots)
    try:
        data = json.loads(cache_file.read_text())
        if data["key"] == key:
            return [
                DebRecord(**{**record, "apt_options": tuple(record.get("apt_options", ()))})
                for record in data["records"]
            ]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring the apt resolution cache %s: %r", cache_file, exc)
    records = resolve()
    data = {"key": key, "records": [dataclasses.asdict(r) for r in records]}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(cache_file)  # atomic: a concurrent bench reads the old or the new answer
    return records
