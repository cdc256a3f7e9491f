"""Spec -> the list of cases to run. Pure: no I/O, same spec gives the same case ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmlab.spec import BenchSpec, FioJob, Variant
from vmlab.spec.matrix import case_id

__all__ = ["Case", "case_id", "plan"]


@dataclass(frozen=True)
class Case:
    """One guest configuration: booted once, runs every job of the spec in turn."""

    id: str
    params: Mapping[str, str]
    variant: Variant
    jobs: tuple[FioJob, ...] = field(default=())


def plan(spec: BenchSpec) -> list[Case]:
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for variant in spec.variants:
        base = case_id(variant.params)
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{base}_{seen[base]}"
        jobs = tuple(
            job.model_copy(update={"runtime_s": spec.job_runtime_s(job)}) for job in spec.jobs
        )
        cases.append(Case(id=cid, params=dict(variant.params), variant=variant, jobs=jobs))
    return cases
