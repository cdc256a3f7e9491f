"""Start-up of the `vmlab` command: only the chosen command's module is loaded, and quick
commands load none of the heavy libraries (issue 18: `results list` under 0.5 s at 10,000 runs);
the quick forms of `results list` and `compare` (vmlab.cli.quick) not even pydantic, which
Typer's parameter conversion imports, and `results list` not Typer. Each check runs in a new
interpreter, as a user's command does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs_fixture import make_run

from vmlab.cli import COMMANDS, GROUPS, TOP_LEVEL, chosen_command
from vmlab.cli.root import build_app

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "numpy",
    "scipy",
    "jinja2",
    "yaml",
    "paramiko",
    "vmlab.spec",
    "vmlab.fio.model",
    "vmlab.report.model",
    "vmlab.report.render",
    "vmlab.results.importer",
)


def _modules_loaded(body: str, *argv: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``body`` ran with ``argv`` (printed
    to stderr after anything the body prints)."""
    code = f"import json, sys\n{body}print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return set(json.loads(done.stderr.splitlines()[-1]))


def _loaded_after_main(*argv: str) -> set[str]:
    """The modules loaded once vmlab ran ``argv``."""
    body = (
        "from vmlab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    )
    return _modules_loaded(body, *argv)


NOT_FOR_STATISTICS = tuple(m for m in HEAVY if m not in ("numpy", "scipy"))  # compare's t-test


@pytest.mark.parametrize(
    ("argv", "unloaded"),
    [
        (("results", "list", "--results", "{results}"), (*HEAVY, "typer", "pydantic")),
        (("-v", "results", "list", "--results={results}"), (*HEAVY, "typer", "pydantic")),
        (
            ("compare", "run-a", "run-b", "--results", "{results}"),
            (*NOT_FOR_STATISTICS, "pydantic"),
        ),
    ],
)
def test_the_quick_forms_load_no_pydantic(
    argv: tuple[str, ...], unloaded: tuple[str, ...], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    for run in ("run-a", "run-b"):
        make_run(results, run, {("nvme", "latency"): {"read_iops": [1.0, 2.0]}})
    loaded = _loaded_after_main(*(a.format(results=results) for a in argv))
    assert "vmlab.results.rundir" in loaded  # it did list or compare
    assert sorted(m for m in unloaded if m in loaded) == []


def _loaded_after_build(*argv: str) -> set[str]:
    body = "from vmlab.cli.root import build_app\nbuild_app(sys.argv[1:] or None)\n"
    return _modules_loaded(body, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ("version",),
        ("results", "list"),
        ("-v", "results", "list", "--results", "r"),
        ("compare", "run-a", "run-b"),
        ("import", "dir"),
    ],
)
def test_quick_commands_load_no_heavy_module(argv: tuple[str, ...]) -> None:
    loaded = _loaded_after_build(*argv)
    assert sorted(m for m in HEAVY if m in loaded) == []
    # and no other command's module
    word = chosen_command(argv)
    assert word is not None
    module = TOP_LEVEL.get(word) or (GROUPS[word][0] if word in GROUPS else None)
    mine = {f"vmlab.cli.{module}"} if module else set()
    others = {f"vmlab.cli.{m}" for m in {*TOP_LEVEL.values(), *(g for g, _ in GROUPS.values())}}
    assert sorted((others - mine) & loaded) == []


def test_the_full_app_loads_no_numpy_or_scipy() -> None:
    loaded = _loaded_after_build()
    assert "vmlab.cli.bench" in loaded  # every command is there
    assert sorted(m for m in ("numpy", "scipy") if m in loaded) == []


def test_the_command_table_covers_every_command() -> None:
    app = build_app()
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    names |= {g.name or "" for g in app.registered_groups}
    assert names == set(COMMANDS)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["results", "list"], "results"),
        (["-v", "-v", "compare", "a", "b"], "compare"),
        (["--help"], None),
        ([], None),
        (["nosuch", "results"], None),
        (["import", "results"], "import"),
    ],
)
def test_chosen_command(argv: list[str], expected: str | None) -> None:
    assert chosen_command(argv) == expected


def test_a_chosen_command_app_has_only_that_command() -> None:
    app = build_app(["results", "list"])
    assert [g.name for g in app.registered_groups] == ["results"]
    assert [c.callback.__name__ for c in app.registered_commands if c.callback] == ["version"]
    app = build_app(["compare", "a", "b"])
    assert app.registered_groups == []
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    assert names == {"version", "import", "compare", "report"}
