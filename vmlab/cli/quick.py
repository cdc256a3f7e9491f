"""The two read-only commands run most often, read without Typer: ``vmlab [-v] results list
[--results DIR]`` and ``vmlab [-v] compare RUN RUN... [--results DIR]``.

Typer (0.29) converts every parameter of a command through a pydantic TypeAdapter: importing
pydantic and building the adapters costs ~0.12 s a command, a third of what `results list`
took with 10,000 runs (issue 18 asks for under 0.5 s), and importing Typer ~0.04 s more. These
two forms hold only plain words, so they are read here and the same command functions are
called, every other parameter at its default; `results list` runs without Typer at all.
Anything else (another option, ``--help``, ``--``, ``--results`` without a value or given
twice, a single RUN, shell completion) is not quick: :func:`quick_command` returns None and
Typer parses it, errors and help included.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmlab.cli.app import setup_logging

_VERBOSE = re.compile(r"-v+")


@dataclass(frozen=True)
class QuickCommand:
    """A quick form of `results list` or `compare`, read from the arguments."""

    command: Literal["list", "compare"]
    runs: tuple[str, ...] = ()
    results: Path = Path("results")
    """--results; its default is the commands' (a test checks)."""
    verbose: int = 0

    def run(self) -> None:
        setup_logging(self.verbose)  # what the root callback does for -v
        if self.command == "list":
            from vmlab.cli.runlist import list_runs_command

            list_runs_command(self.results)
            return
        import typer  # vmlab.cli.report's: compare is quick enough with it

        from vmlab.cli.report import compare

        try:
            compare(list(self.runs), results=self.results)
        except typer.Exit as exc:  # the gate's exit code (rules only: not a quick form)
            sys.exit(exc.exit_code)


def quick_command(argv: Sequence[str]) -> QuickCommand | None:
    """``argv`` as a quick command, or None if Typer should read it."""
    if any(name.endswith("_COMPLETE") for name in os.environ):  # Typer's shell completion
        return None
    words = list(argv)
    verbose = 0
    while words and (words[0] == "--verbose" or _VERBOSE.fullmatch(words[0])):
        verbose += 1 if words[0] == "--verbose" else len(words[0]) - 1
        words.pop(0)
    if words[:2] == ["results", "list"]:
        command: Literal["list", "compare"] = "list"
        operands = _operands(words[2:])
        if operands is None or operands[0]:
            return None
    elif words[:1] == ["compare"]:
        command = "compare"
        operands = _operands(words[1:])
        if operands is None or len(operands[0]) < 2:  # one RUN needs --baseline: Typer's
            return None
    else:
        return None
    runs, results = operands
    if results is None:
        return QuickCommand(command, runs, verbose=verbose)
    return QuickCommand(command, runs, results, verbose)


def _operands(words: Sequence[str]) -> tuple[tuple[str, ...], Path | None] | None:
    """The positional words and the --results value; None for any other option."""
    runs: list[str] = []
    results: str | None = None
    rest = iter(words)
    for word in rest:
        if not word.startswith("-"):
            runs.append(word)
            continue
        if word == "--results":
            value = next(rest, "")
        elif word.startswith("--results="):
            value = word.removeprefix("--results=")
        else:
            return None
        if results is not None or not value or value.startswith("-"):
            return None
        results = value
    return tuple(runs), None if results is None else Path(results)
