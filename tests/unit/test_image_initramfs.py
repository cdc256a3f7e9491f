"""The initramfs' inputs: the rendered /init, the ldd closure of a binary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmlab import proc
from vmlab.errors import HostError
from vmlab.guest.image.initramfs import ldd_closure, render_init


def test_rendered_init_has_markers_and_no_placeholders() -> None:
    text = render_init()
    assert text.startswith("#!/bin/sh\n")
    assert "{{" not in text and "{%" not in text
    assert 'echo "VMLAB-READY" > /dev/ttyS0' in text
    assert "VMLAB-INIT-FAILED: $*" in text
    assert "10.0.2.15/24" in text and "vmlab.authkey=" in text


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd missing: apt-get install libc-bin")
def test_ldd_closure_maps_host_libraries_into_usr(tmp_path: Path) -> None:
    libs = ldd_closure(Path("/bin/true"), tmp_path)
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in libs
    assert all(guest.startswith("/usr/") for guest in libs)
    assert all(src.is_file() and not src.is_symlink() for src in libs.values())


def test_ldd_missing_library_is_a_host_error(monkeypatch: pytest.MonkeyPatch) -> None:
    out = b"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\tlibrbd.so.1 => not found\n"
    monkeypatch.setattr(proc, "run", lambda argv, **kw: proc.Completed(tuple(argv), 0, out, b""))
    with pytest.raises(HostError, match=r"librbd\.so\.1") as info:
        ldd_closure(Path("/usr/bin/fio"), Path("/nonexistent"))
    assert info.value.hint is not None and "apt-get install fio" in info.value.hint
