"""Debian packages: apt records, Depends names, the .deb cache and apt's failure hints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vmlab import proc
from vmlab.errors import CommandError, HostError
from vmlab.guest.image.debs import DebRecord, _parse_records, fetch_debs

RECORDS = [
    DebRecord("linux-image-6.1.0-9-cloud-amd64", "6.1.1-1", "pool/l/k.deb", "aa", 1, "kmod"),
    DebRecord("fio", "3.33-3", "pool/f/fio_3.33-3_amd64.deb", "bb", 1, "libc6 (>= 2.34), libaio1"),
]


def test_depends_names() -> None:
    rec = DebRecord("x", "1", "p/x.deb", "", 0, "libc6 (>= 2.34), libfoo1 | libbar1, python3:any")
    assert rec.depends_names() == ["libc6", "libfoo1", "python3"]


def test_parse_apt_records() -> None:
    text = "Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2\n"
    assert _parse_records(text) == [
        {"Package": "a", "Version": "1", "Description": "x\nmore"},
        {"Package": "b", "Version": "2"},
    ]


def test_download_without_lists_hints_apt_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lists(argv: list[str], **kwargs: object) -> None:
        raise CommandError(
            "apt-get failed", argv=argv, returncode=100,
            output="E: Can't find a source to download version '3.33-3' of 'fio:amd64'",
        )  # fmt: skip

    monkeypatch.setattr(proc, "run", no_lists)
    with pytest.raises(HostError) as info:
        fetch_debs(RECORDS, tmp_path / "debs", None)
    assert info.value.hint is not None and "apt-get update" in info.value.hint
    assert list((tmp_path / "debs").iterdir()) == []  # the download dir is gone


def test_cached_deb_with_the_right_checksum_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "fio_3.33-3_amd64.deb").write_bytes(b"deb")
    rec = DebRecord("fio", "3.33-3", "pool/f/fio_3.33-3_amd64.deb",
                    hashlib.sha256(b"deb").hexdigest(), 3, "")  # fmt: skip
    monkeypatch.setattr(proc, "run", lambda *a, **k: pytest.fail("must not download"))
    assert fetch_debs([rec], debs, None) == {"fio": debs / "fio_3.33-3_amd64.deb"}
