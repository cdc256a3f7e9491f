"""Spec arguments shared by the commands that take one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmlab.spec import BenchSpec

SpecArg = Annotated[
    Path | None,
    typer.Argument(
        help="spec file (YAML); without one, the embedded default lab", show_default=False
    ),
]


def load(spec_path: Path | None, runtime_s: int | None) -> BenchSpec:
    from vmlab.spec import default_lab, load_spec

    spec = load_spec(spec_path) if spec_path else default_lab()
    if runtime_s is not None:
        spec = spec.model_copy(update={"runtime_s": runtime_s})
    return spec
