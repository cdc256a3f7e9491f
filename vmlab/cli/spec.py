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


def load(spec_path: Path | None, runtime_s: int | None, until_ci: float | None = None) -> BenchSpec:
    from vmlab.spec import default_lab, load_spec

    spec = load_spec(spec_path) if spec_path else default_lab()
    if runtime_s is not None:
        spec = spec.model_copy(update={"runtime_s": runtime_s})
    if until_ci is not None:
        spec = spec.model_copy(update={"repeat": until_ci_repeat(spec.repeat, until_ci)})
    return spec


def until_ci_repeat(repeat: Repeat, ci_pct: float) -> Repeat:
    """``--until-ci PCT``: the spec's min and max with ci_pct PCT; a fixed count N (or a
    mapping with min = max) becomes min max(N, 3), max max(N, 20)."""
    if repeat.min < repeat.max:
        return repeat.model_copy(update={"ci_pct": ci_pct})
    return Repeat(
        min=max(repeat.min, 3), max=max(repeat.max, 20), ci_pct=ci_pct, until=repeat.until
    )
