"""Unpacking archives from elsewhere, with Python's data filter and without it (Debian 12's
Python 3.11.2 has no extraction filters; CI runs on it)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vmlab.tarball import extract_data


def archive(*members: tuple[str, bytes | None, str]) -> tarfile.TarFile:
    """(name, data or None for a folder/link, link target or "") members, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return tarfile.open(fileobj=buf)


@pytest.fixture(params=["filter", "no-filter"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no-filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters (3.11.4 and later)")
    return str(request.param)


def test_a_run_directory_unpacks(tmp_path: Path, python: str) -> None:
    tar = archive(
        ("run", None, ""), ("run/spec.json", b"{}", ""), ("run/latest", None, "spec.json")
    )
    extract_data(tar, tmp_path)
    assert (tmp_path / "run/spec.json").read_bytes() == b"{}"
    assert (tmp_path / "run/latest").resolve() == (tmp_path / "run/spec.json").resolve()


@pytest.mark.parametrize(
    "member",
    [
        ("../escaped", b"x", ""),
        ("/etc/escaped", b"x", ""),
        ("run/link", None, "/etc/passwd"),
        ("run/link", None, "../../outside"),
    ],
)
def test_what_would_land_outside_is_refused_and_nothing_written(
    tmp_path: Path, python: str, member: tuple[str, bytes | None, str]
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    if python == "filter" and member[0].startswith("/"):
        # Python's data filter unpacks an absolute name inside dest instead of refusing it
        extract_data(archive(("run/ok", b"1", ""), member), dest)
        assert (dest / "etc/escaped").exists()
    else:
        with pytest.raises(tarfile.TarError):
            extract_data(archive(("run/ok", b"1", ""), member), dest)
    assert not (tmp_path / "escaped").exists() and not Path("/etc/escaped").exists()
    if python == "no-filter":  # checked before anything is written
        assert not any(dest.iterdir())
