"""Exit codes and messages for bad arguments and bad specs, as the README lists them: 2 for a
bad spec or bad arguments, never a traceback; run ids whole on a narrow terminal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmlab.cli import main

DATA = Path(__file__).parent.parent / "data"
SPECS = DATA / "specs"


def vmlab(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    code = done.value.code
    return code if isinstance(code, int) else (0 if code is None else 1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("render", "--accel", "foo"), "'foo': expected tcg or kvm"),
        (("render", "--launcher", "foo"), "'foo': expected qemu or libvirt"),
        (("bench", "--accel", "foo"), "'foo': expected kvm or tcg"),
        (("bench", "--launcher", "foo"), "'foo': expected qemu or libvirt"),
        (("fleet", "run", "-i", "inv", "spec", "--accel", "foo"), "'foo': expected kvm or tcg"),
        (("image", "build", "--kind", "foo"), "'foo': expected default or rootfs"),
        (("render", "--case", "nosuch"), "no case 'nosuch' in the plan (cases: virtio-blk,"),
        (("import", "/nope"), "/nope: no such file or directory"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    args: tuple[str, ...], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vmlab(*args) == 2
    err = " ".join(capsys.readouterr().err.split())  # typer boxes and wraps its messages
    assert expected in err
    assert "Traceback" not in err


def test_a_fifo_spec_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    assert vmlab("render", str(fifo)) == 2
    assert f"{fifo}: cannot read spec: not a regular file" in capsys.readouterr().err


def test_a_big_matrix_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "name: big\nguest:\n  cpus: [1, 2, 3, 4, 5, 6, 7, 8]\n"
        "  memory_mib: [256, 512, 768, 1024, 1280, 1536, 1792, 2048]\n"
        "  kernel_args: [a, b, c, d, e, f, g, h]\njobs: reference\n"
    )
    assert vmlab("render", str(spec)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the matrix has 512 cases" in err and "--yes" in err
    assert vmlab("render", "--yes", "--case", "cpus-8_memory-mib-2048_h", str(spec)) == 0
    assert "-append" in capsys.readouterr().out


def test_render_shows_kernel_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "k.yaml"
    spec.write_text("name: k\nguest:\n  kernel_args: 'quiet mitigations=off'\njobs: reference\n")
    assert vmlab("render", str(spec)) == 0
    out = capsys.readouterr().out
    assert "mitigations=off" in out


def test_an_unwritable_report_folder_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    results = tmp_path / "results"
    assert vmlab("import", str(DATA / "fio" / "fio-2.18-ssd"), "--results", str(results)) == 0
    imported = capsys.readouterr().out
    (run_id,) = [p.name for p in results.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert run_id in imported  # whole, on a 40-column terminal
    assert vmlab("results", "list", "--results", str(results)) == 0
    assert run_id in capsys.readouterr().out
    code = vmlab("report", "--results", str(results), "--out", "/proc/nope", run_id)
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write the report to /proc/nope" in " ".join(err.split())
