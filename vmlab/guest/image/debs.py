"""Debian packages of a guest build: apt resolution, the .deb cache, extraction.

``apt-cache show`` resolves each package to the exact candidate (version, pool file, sha256);
``apt-get download`` fetches what ``<cache>/debs`` lacks, each file checked against apt's
sha256; ``dpkg -x`` unpacks a .deb into a tree. Nothing is installed on the host and no root is
needed. The default image resolves its packages here (:func:`resolve_packages`); the rootfs
build (:mod:`vmlab.guest.rootfs`) asks apt for its candidate versions and unpacks the default
image's kernel and busybox from the same cache.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vmlab import proc
from vmlab.errors import CommandError, HostError
from vmlab.guest.image.cache import ProgressFn, note, sha256_file
from vmlab.guest.image.recipe import KERNEL_METAPACKAGE, USERLAND_PACKAGES

APT_HINT = "run `apt-get update` (as root) so apt knows the Debian 12 package lists"
DEBIAN_HINT = "build the guest on a Debian 12 host: it uses apt and dpkg and copies libraries"
# For a program the extracted packages should have shipped and did not.
LAYOUT_HINT = "the Debian package layout changed: vmlab.guest.image needs an update"


@dataclass(frozen=True)
class DebRecord:
    """One package as apt resolved it (the candidate version)."""

    package: str
    version: str
    filename: str  # pool path, e.g. pool/main/f/fio/fio_3.33-3_amd64.deb
    sha256: str
    size: int
    depends: str
    apt_options: tuple[str, ...] = ()  # another suite's private lists (suite_apt_options)

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


def debs_dir(cache: Path) -> Path:
    """Where the downloaded .debs of every build are kept: ``<cache>/debs``."""
    return cache / "debs"


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


# Suites beyond the host's apt sources that a build may take a package from (a nested L1's
# kernel: ``linux-image-amd64/bookworm-backports``), each read into private package lists.
EXTRA_SUITES = {"bookworm-backports": "main"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LISTS_MAX_AGE_S = 24 * 3600


def suite_apt_options(suite: str, cache: Path) -> tuple[str, ...]:
    """apt options that read ``suite`` alone, from lists under ``<cache>/apt/<suite>`` that
    are fetched (``apt-get update`` on them only, never the host's) when missing or a day
    old. The host's apt configuration (proxy, keyrings) still applies."""
    if suite not in EXTRA_SUITES:
        raise HostError(
            f"vmlab reads no Debian suite {suite!r}",
            hint=f"use one of: {', '.join(EXTRA_SUITES)} (or the host's own sources)",
        )
    root = cache / "apt" / suite
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    sources.write_text(f"deb {DEBIAN_MIRROR} {suite} {EXTRA_SUITES[suite]}\n")
    options: tuple[str, ...] = (
        "-o", f"Dir::Etc::SourceList={sources}",
        "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
    )  # fmt: skip
    if os.geteuid() == 0:
        options += ("-o", "APT::Sandbox::User=root")  # _apt cannot write into our dir
    stamp = root / "updated"
    if not stamp.is_file() or time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE_S:
        try:
            proc.run(["apt-get", *options, "update"], timeout_s=300, missing_hint=DEBIAN_HINT)
        except CommandError as exc:
            exc.hint = f"check network access to {DEBIAN_MIRROR} ({suite}), then retry"
            raise
        stamp.touch()
    return options


def apt_show(specs: Sequence[str], apt_options: Sequence[str] = ()) -> list[DebRecord]:
    argv = ["apt-cache", *apt_options, "show", "--no-all-versions", *specs]
    try:
        shown = proc.run(argv, timeout_s=60, hint=APT_HINT, missing_hint=DEBIAN_HINT)
    except CommandError as exc:
        raise HostError(
            f"apt cannot resolve {', '.join(specs)}: {exc.output.strip()}", hint=APT_HINT
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
            apt_options=tuple(apt_options),
        )
    result = []
    for spec in specs:
        name = spec.split("=", 1)[0]
        if name not in found:
            raise HostError(f"apt has no downloadable candidate for {spec}", hint=APT_HINT)
        result.append(found[name])
    return result


def resolve_packages() -> list[DebRecord]:
    """The exact packages of the guest: the versioned cloud kernel (from the metapackage's
    Depends) first, then :data:`USERLAND_PACKAGES`."""
    (meta,) = apt_show([KERNEL_METAPACKAGE])
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
    return apt_show([kernel_spec, *USERLAND_PACKAGES])


def host_library_packages(records: Sequence[DebRecord]) -> dict[str, str]:
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
        missing_hint=DEBIAN_HINT,
    )
    versions = dict.fromkeys(names, "missing")
    for line in query.out.splitlines():
        pkg, _, rest = line.partition("\t")
        version, _, status = rest.partition("\t")
        if pkg in versions and status.endswith(" installed"):
            versions[pkg] = version
    return versions


def _download(records: Sequence[DebRecord], options: Sequence[str], tmp: Path) -> None:
    argv = ["apt-get", *options, "download"]
    if os.geteuid() == 0 and "APT::Sandbox::User=root" not in options:
        argv += ["-o", "APT::Sandbox::User=root"]  # _apt cannot write into our dir
    argv += [f"{r.package}={r.version}" for r in records]
    try:
        proc.run(argv, cwd=tmp, timeout_s=900, missing_hint=DEBIAN_HINT)
    except CommandError as exc:
        if re.search(r"Can't find a source|Unable to locate|No packages found", exc.output):
            raise HostError(
                f"apt-get download failed: {exc.output.strip()}", hint=APT_HINT
            ) from exc
        exc.hint = "check network access to the Debian mirror, then retry"
        raise


def fetch_debs(
    records: Sequence[DebRecord], debs_dir: Path, progress: ProgressFn | None
) -> dict[str, Path]:
    """Each record's .deb in ``debs_dir`` (checksum-verified), downloading the missing ones."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    missing: list[DebRecord] = []
    for rec in records:
        target = debs_dir / rec.deb_name
        if target.is_file() and (not rec.sha256 or sha256_file(target) == rec.sha256):
            result[rec.package] = target
        else:
            missing.append(rec)
    if not missing:
        return result
    for stale in debs_dir.glob(".download-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
    total_mb = sum(r.size for r in missing) / 1e6
    note(progress, f"downloading {len(missing)} packages ({total_mb:.1f} MB)")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs_dir))
    try:
        by_source: dict[tuple[str, ...], list[DebRecord]] = {}
        for rec in missing:
            by_source.setdefault(rec.apt_options, []).append(rec)
        for options, group in by_source.items():
            _download(group, options, tmp)
        for rec in missing:
            got = sorted(tmp.glob(f"{rec.package}_*.deb"))
            if len(got) != 1:
                raise HostError(
                    f"apt-get download left {len(got)} files for {rec.package} in {tmp}",
                    hint=APT_HINT,
                )
            if rec.sha256 and sha256_file(got[0]) != rec.sha256:
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


def extract_deb(deb: Path, tree: Path, *, timeout_s: float = 300) -> None:
    """Unpack ``deb`` into ``tree`` (``dpkg -x``: files only, no maintainer scripts)."""
    proc.run(["dpkg", "-x", deb, tree], timeout_s=timeout_s, missing_hint=DEBIAN_HINT)
