"""The quick forms of `results list` and `compare` (vmlab.cli.quick): read without Typer, they
print and exit exactly as the Typer command does; every other form is left to Typer."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runs_fixture import make_run

from vmlab.cli import main
from vmlab.cli.app import EXIT_INTERRUPTED, run_app, run_command
from vmlab.cli.quick import QuickCommand, quick_command
from vmlab.cli.report import compare
from vmlab.cli.results import list_command
from vmlab.cli.root import build_app

ROOT = Path(__file__).resolve().parents[2]
CELLS = {
    ("virtio-blk", "latency"): {"read_iops": [100.0, 110.0, 105.0]},
    ("nvme", "latency"): {"read_iops": [200.0, 210.0, 190.0]},
}
SLOWER = {
    ("virtio-blk", "latency"): {"read_iops": [90.0, 91.0, 89.0]},
    ("nvme", "latency"): {"read_iops": [201.0, 209.0, 191.0]},
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    make_run(root, "run-a", CELLS, host="hv1")
    make_run(root, "run-b", SLOWER, status="failed")
    return root


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["results", "list"], QuickCommand("list")),
        (["results", "list", "--results", "r"], QuickCommand("list", (), Path("r"))),
        (["-vv", "results", "list", "--results=r"], QuickCommand("list", (), Path("r"), 2)),
        (["-v", "--verbose", "results", "list"], QuickCommand("list", verbose=2)),
        (["compare", "a", "b"], QuickCommand("compare", ("a", "b"))),
        (
            ["compare", "--results", "r", "a", "b", "c"],
            QuickCommand("compare", ("a", "b", "c"), Path("r")),
        ),
    ],
)
def test_the_quick_forms(argv: list[str], expected: QuickCommand) -> None:
    assert quick_command(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["version"],
        ["results"],
        ["results", "show", "a"],
        ["results", "list", "extra"],
        ["results", "list", "--help"],
        ["results", "--results", "r", "list"],
        ["results", "list", "--results"],
        ["results", "list", "--results="],
        ["results", "list", "--results", "r", "--results", "s"],
        ["results", "list", "--results", "--help"],
        ["results", "list", "-v"],
        ["-q", "results", "list"],
        ["compare", "a"],
        ["compare", "a", "b", "--rule", "read_iops:-5%"],
        ["compare", "a", "b", "--baseline", "a"],
        ["compare", "a", "--", "b"],
        ["compare", "a", "-b"],
        ["report", "a", "b"],
    ],
)
def test_every_other_form_is_typers(argv: list[str]) -> None:
    assert quick_command(argv) is None


def test_shell_completion_is_typers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_VMLAB_COMPLETE", "bash_complete")
    assert quick_command(["results", "list"]) is None


def test_the_quick_default_results_root_is_the_commands() -> None:
    for command in (list_command, compare):
        assert (
            inspect.signature(command).parameters["results"].default == QuickCommand("list").results
        )


def _exit_code(run: object) -> int:
    with pytest.raises(SystemExit) as done:
        run()  # type: ignore[operator]
    code = done.value.code
    return code if isinstance(code, int) else (0 if code is None else 1)


@pytest.mark.parametrize(
    "args",
    [
        ("results", "list", "--results", "{results}"),
        ("-v", "results", "list", "--results={results}"),
        ("results", "list", "--results", "{results}/nowhere"),
        ("compare", "run-a", "run-b", "--results", "{results}"),
        ("--verbose", "compare", "--results", "{results}", "run-b", "run-a", "run-a"),
        ("compare", "run-a", "nosuch", "--results", "{results}"),
    ],
)
def test_quick_and_typer_print_and_exit_the_same(
    args: tuple[str, ...], results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(results=results) for a in args]
    assert quick_command(argv) is not None
    quick_code = _exit_code(lambda: main(argv))
    quick = capsys.readouterr()
    typer_code = _exit_code(lambda: run_app(build_app(argv), argv))
    typer = capsys.readouterr()
    assert (quick_code, quick.out, quick.err) == (typer_code, typer.out, typer.err)
    assert quick.out or quick.err


def test_ctrl_c_exits_130_as_typer_does() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert _exit_code(lambda: run_command(interrupted)) == EXIT_INTERRUPTED


def _to_a_closed_pipe(code: str, *args: str) -> tuple[int, str]:
    reader, writer = os.pipe()
    os.close(reader)  # `vmlab results list | head` once head has exited
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            check=False,
        )
    finally:
        os.close(writer)
    return done.returncode, done.stderr


def test_a_closed_pipe_exits_1_quietly_as_typer_does(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for i in range(150):  # a listing longer than the pipe's buffer: the write itself fails
        make_run(results, f"run-{i:03d}", {("nvme", "latency"): {"read_iops": [1.0]}})
    argv = ["results", "list", "--results", str(results)]
    quick = _to_a_closed_pipe("import sys; from vmlab.cli import main; main(sys.argv[1:])", *argv)
    typer = _to_a_closed_pipe(
        "import sys; from vmlab.cli.app import run_app; from vmlab.cli.root import build_app; "
        "run_app(build_app(sys.argv[1:]), sys.argv[1:])",
        *argv,
    )
    assert quick == typer == (1, "")
