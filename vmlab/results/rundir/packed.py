"""Repetitions of a case, unpacked (a folder each) or packed (two files for the whole case).

A bench writes each repetition as it finishes, into its own folder: ``jobs/<job>/r<N>/`` with
the raw ``fio.json`` and its ``summary.json``. ``vmlab import`` writes a case all at once, so it
packs them, because creating a folder and two files per repetition was most of what an import
cost (on this disk, more than parsing the file):

    cases/<case>/summaries.json   {"<job>/r<N>": what jobs/<job>/r<N>/summary.json would hold}
    cases/<case>/raw.tar          jobs/<job>/r<N>/fio.json: the raw files, byte for byte

``tar -xf raw.tar`` in the case folder puts every raw file where an unpacked case has it. The
readers here take either layout; a repetition's path is ``jobs/<job>/r<N>`` under its case in
both (for a packed case, a name, not a folder).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from vmlab.errors import ResultError
from vmlab.results.rundir.files import create_file, read_optional_json

log = logging.getLogger(__name__)

SUMMARIES = "summaries.json"
RAW_TAR = "raw.tar"
_REPETITION = re.compile(r"^r(\d+)$")


@dataclass(frozen=True)
class PackedRepetition:
    job: str
    repetition: int
    raw: bytes
    """The raw fio output, byte for byte."""
    summary: Any
    """What the unpacked repetition's summary.json would hold (JSON-serialisable by
    pydantic-core: models are written as their JSON)."""

    @property
    def key(self) -> str:
        return f"{self.job}/r{self.repetition}"


class _TarHeaders:
    """ustar headers of regular files (mode 0644, one mtime), as ``tarfile`` writes them.

    ``tarfile`` encodes a template once; a member patches in its name and size and sums the
    checksum again: ``TarInfo.tobuf`` for each of an import's 10,000 members cost 0.3 s, more
    than writing the tar. A name over 100 bytes (a long job name) or a size past the 11
    octal digits of ustar goes through ``tobuf`` instead (ustar's name split in two, or pax
    headers)."""

    def __init__(self, mtime: int) -> None:
        self.mtime = mtime
        template = bytearray(self._tobuf("", 0))
        template[0:100] = bytes(100)  # name
        template[124:136] = bytes(12)  # size
        template[148:156] = b" " * 8  # checksum, counted as spaces
        self.template = bytes(template)
        self.template_sum = sum(template)

    def _tobuf(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self.mtime, 0o644
        try:  # plain ustar when the name fits; pax headers only for a long job name
            return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        except ValueError:
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def header(self, name: str, size: int) -> bytes:
        encoded = name.encode("utf-8", "surrogateescape")
        if len(encoded) > 100 or size >= 8**11:
            return self._tobuf(name, size)
        size_field = b"%011o\0" % size
        checksum = self.template_sum + sum(encoded) + sum(size_field)
        t = self.template
        return b"".join(
            (
                encoded.ljust(100, b"\0"),
                t[100:124],
                size_field,
                t[136:148],
                b"%06o\0 " % checksum,
                t[156:],
            )
        )

    def member(self, name: str, data: bytes) -> bytes:
        return self.header(name, len(data)) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def tar_bytes(members: Sequence[tuple[str, bytes]], mtime: int) -> bytes:
    """A whole tar archive of regular files, as ``tarfile`` would write it: each member's
    header and data padded to 512 bytes, two zero blocks, zeros up to the 10 KiB record."""
    headers = _TarHeaders(mtime)
    body = [headers.member(name, data) for name, data in members]
    size = sum(map(len, body)) + 2 * tarfile.BLOCKSIZE
    return b"".join([*body, bytes(2 * tarfile.BLOCKSIZE + -size % tarfile.RECORDSIZE)])


def write_packed(case_dir: Path, repetitions: Sequence[PackedRepetition]) -> None:
    """Write ``repetitions`` packed into ``case_dir`` (raw.tar first: the truth before what
    was read from it). Neither file may exist (ResultError).

    summaries.json is on one line: only vmlab reads it (``less`` is for the raw files), and
    indenting doubled its size and the time to write it."""
    # Written in one piece: TarFile.addfile's per-member bookkeeping cost as much as the
    # rest of an import's writing.
    members = [(f"jobs/{r.job}/r{r.repetition}/fio.json", r.raw) for r in repetitions]
    create_file(case_dir / RAW_TAR, tar_bytes(members, int(time.time())))
    summaries = {r.key: r.summary for r in repetitions}
    create_file(case_dir / SUMMARIES, to_json(summaries, inf_nan_mode="constants") + b"\n")


@lru_cache(maxsize=64)
def _load_summaries(path: Path, stamp: int) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ResultError(f"cannot read {path.name}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise ResultError(f"{path.name} is not a mapping of <job>/r<N> to summaries", path=path)
    return data


def packed_summaries(case_dir: Path) -> dict[str, Any]:
    """``<job>/r<N>`` -> summary of a packed case; {} for an unpacked one. Cached while the
    file is unchanged (a report reads one repetition at a time)."""
    path = case_dir / SUMMARIES
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    return _load_summaries(path, stamp)


def repetition_summaries(case_dir: Path) -> Iterator[tuple[str, int, Any, Path]]:
    """(job, repetition, summary, repetition path) of every stored repetition of a case, in
    either layout, sorted by job then repetition path as the folders sort. An unreadable
    summary.json or summaries.json is logged and its repetitions skipped."""
    found: list[tuple[str, str, int, Any, Path]] = []
    for summary in case_dir.glob("jobs/*/r*/summary.json"):
        match = _REPETITION.match(summary.parent.name)
        if match is None:  # not a repetition's folder: not read
            continue
        data = read_optional_json(summary)
        if data is None:
            continue
        job = summary.parent.parent.name
        found.append((job, summary.parent.name, int(match.group(1)), data, summary.parent))
    try:
        packed = packed_summaries(case_dir)
    except ResultError as exc:
        log.warning("%s; its repetitions are ignored", exc)
        packed = {}
    for key, data in packed.items():
        job, _, name = key.rpartition("/")
        match = _REPETITION.match(name)
        if not job or match is None:
            log.warning("%s: %r is not <job>/r<N>; ignored", case_dir / SUMMARIES, key)
            continue
        found.append((job, name, int(match.group(1)), data, case_dir / "jobs" / job / name))
    found.sort(key=lambda f: (f[0], f[1]))
    for job, _, repetition, data, path in found:
        yield job, repetition, data, path


def read_summary(repetition: Path) -> Any:
    """The summary of one repetition (its folder's summary.json, or its packed case's entry).
    Raises ResultError when neither is there."""
    unpacked = repetition / "summary.json"
    try:
        return json.loads(unpacked.read_bytes())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise ResultError(f"cannot read summary.json: {exc}", path=unpacked) from exc
    case_dir = repetition.parent.parent.parent
    key = f"{repetition.parent.name}/{repetition.name}"
    summaries = packed_summaries(case_dir)
    if key not in summaries:
        raise ResultError(
            "no summary.json, and no packed summary of this repetition",
            path=repetition,
            hint=f"an imported case keeps its summaries in {case_dir / SUMMARIES}",
        )
    return summaries[key]


def read_raw(repetition: Path) -> bytes:
    """The raw fio output of one repetition, in either layout. Raises ResultError."""
    unpacked = repetition / "fio.json"
    try:
        return unpacked.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ResultError(f"cannot read fio.json: {exc}", path=unpacked) from exc
    case_dir = repetition.parent.parent.parent
    member = f"jobs/{repetition.parent.name}/{repetition.name}/fio.json"
    try:
        with tarfile.open(case_dir / RAW_TAR) as tar:
            extracted = tar.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ResultError(
            f"no fio.json for this repetition ({exc})",
            path=repetition,
            hint=f"an imported case keeps its raw files in {case_dir / RAW_TAR}",
        ) from exc


__all__ = [
    "RAW_TAR",
    "SUMMARIES",
    "PackedRepetition",
    "packed_summaries",
    "read_raw",
    "read_summary",
    "repetition_summaries",
    "write_packed",
]
