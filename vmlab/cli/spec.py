"""Spec arguments shared by the commands that take one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmlab.spec import BenchSpec, Repeat

SpecArg = Annotated[
    Path | None,
    typer.Argument(
        help="spec file (YAML); without one, the embedded default lab", show_default=False
    ),
]


YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", help="go ahead with a matrix of more cases than vmlab runs unasked (256)"
    ),
]


def load(
    spec_path: Path | None,
    runtime_s: int | None,
    until_ci: float | None = None,
    *,
    yes: bool = False,
) -> BenchSpec:
    from vmlab.spec import CONFIRM_CASES, default_lab, load_spec

    limit = None if yes else CONFIRM_CASES
    spec = load_spec(spec_path, max_cases=limit) if spec_path else default_lab()
    if runtime_s is not None:
        spec = spec.model_copy(update={"runtime_s": runtime_s})
    if until_ci is not None:
        spec = spec.model_copy(update={"repeat": until_ci_repeat(spec.repeat, until_ci)})
    return spec


def check_choice(value: str | None, choices: tuple[str, ...], option: str) -> None:
    """A usage error (exit 2) for an option value outside its choices."""
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r}: expected {' or '.join(choices)}", param_hint=option)


def until_ci_repeat(repeat: Repeat, ci_pct: float) -> Repeat:
    """``--until-ci PCT``: the spec's min and max with ci_pct PCT; a fixed count N (or a
    mapping with min = max) becomes min max(N, 3), max max(N, 20)."""
    if repeat.min < repeat.max:
        return repeat.model_copy(update={"ci_pct": ci_pct})
    return Repeat(
        min=max(repeat.min, 3), max=max(repeat.max, 20), ci_pct=ci_pct, until=repeat.until
    )
