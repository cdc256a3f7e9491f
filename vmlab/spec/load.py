"""Reading a spec: parsed YAML in, every variant of its matrix validated, one BenchSpec out.

Problems are collected rather than raised one by one: the :class:`SpecError` names every wrong
field with its path. ``DEFAULT_LAB`` is the spec vmlab runs when it is given none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vmlab.errors import SpecError
from vmlab.spec.matrix import (
    _VARIANT_KEYS,
    case_id,
    count_cases,
    expand_matrix,
    include_problems,
    matrix_axes,
)
from vmlab.spec.models import BenchSpec, FioJob, IperfJob, Variant, reference_jobs
from vmlab.spec.source import parse_yaml, read_spec_text

_TOP_KEYS = (
    "name",
    "description",
    "runtime_s",
    "baseline",
    "repeat",
    "warmup",
    "jobs",
    "net_jobs",
    *_VARIANT_KEYS,
    "include",
)


def _problems(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    items = error.errors()
    for item in items:
        # A union (image: default | {kind: ...}) reports each alternative: keep the one that
        # was meant, and leave pydantic's internal names for the alternatives out of the path.
        literal = any(str(p).startswith("literal[") for p in item["loc"])
        if len(items) > 1 and literal and isinstance(item.get("input"), Mapping):
            continue
        other_literal = any(str(p).startswith("literal[") for i in items for p in i["loc"])
        if len(items) > 1 and not literal and other_literal and isinstance(item.get("input"), str):
            continue
        parts = [str(p) for p in item["loc"] if p != "function-after" and "[" not in str(p)]
        if item["type"] == "control_character":
            parts.append(str(item.get("ctx", {}).get("field", "")))
        loc = ".".join(parts)
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = item.get("input")
        shown = "" if isinstance(got, Mapping | list) or got is None else f" (got {got!r})"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}{shown}")
    return lines


# Above this many cases a run (or a render) must be confirmed (--yes): an axis too many is easy
# to write and costs hours. Above MAX_CASES vmlab refuses: expanding alone would take minutes.
CONFIRM_CASES = 256
MAX_CASES = 20_000
BOOT_ESTIMATE_S = 15  # a guest's boot and readiness under TCG, for the estimate


def check_matrix_size(
    raw: Mapping[str, Any], jobs: list[FioJob], *, where: str, file: Path | None, limit: int | None
) -> None:
    """Refuse a matrix of more than `limit` cases (None: only MAX_CASES), saying how many cases
    it has, from which axes, and about how long they would run."""
    axes = matrix_axes(raw)
    cases = count_cases(raw)
    if cases <= min(limit if limit is not None else MAX_CASES, MAX_CASES):
        return
    runtime = raw.get("runtime_s")
    repeat, warmup = raw.get("repeat", 1), raw.get("warmup", False)
    reps = (repeat if isinstance(repeat, int) else 1) + (1 if warmup is True else 0)
    per_case = BOOT_ESTIMATE_S + sum(
        (runtime if isinstance(runtime, int) else j.runtime_s) + j.ramp_s for j in jobs
    ) * max(reps, 1)
    hours = cases * per_case / 3600
    shown = ", ".join(f"{path} x{n}" for path, n in axes if n > 1)
    if isinstance(raw.get("include"), list):
        shown += f"{', ' if shown else ''}include: {cases - math.prod(n for _, n in axes)}"
    message = (
        f"{where}: the matrix has {cases:,} cases ({shown}): about {hours:,.0f} h "
        f"at ~{per_case:.0f} s per case"
    )
    if cases > MAX_CASES:
        raise SpecError(
            f"{message}; vmlab runs at most {MAX_CASES:,}",
            file=file,
            hint="split the spec, or make some lists single values",
        )
    raise SpecError(
        message,
        file=file,
        hint=f"more than {limit} cases must be confirmed: pass --yes, or make some lists "
        "single values",
    )


def _cross_problems(
    jobs: list[FioJob], net_jobs: list[IperfJob], variants: list[Variant], *, baseline: bool
) -> list[str]:
    """What is wrong between the parts of a spec that are each valid: jobs naming disks and
    NICs the guests lack, host and nested cases mixed, a host baseline of a passed-through
    device."""
    problems: list[str] = []
    for net_job in net_jobs:
        for checked in variants:
            if net_job.nic not in {n.name for n in checked.guest.nics}:
                problems.append(
                    f"net_jobs.{net_job.name}.nic: no NIC named {net_job.nic!r} in guest.nics "
                    "(give the guest a lab NIC, e.g. nics: [{attach: tap}])"
                )
                break
    kinds = {"nested" if v.nested else "host" for v in variants}
    if len(kinds) > 1:
        problems.append(
            "hypervisor: every case runs on the host or every case runs nested, not a mix "
            "(give hypervisor one kind; a list of kernels is an axis: "
            "{kind: nested, kernel: [A, B]})"
        )
    disk_names = {d.name for v in variants for d in v.guest.disks}
    hostdev_names = {n for v in variants for n in v.guest.hostdev_names()}
    for job in jobs:
        if not variants or job.disk in disk_names:
            continue
        if job.disk in hostdev_names:
            lacking = [v for v in variants if job.disk not in v.guest.hostdev_names()]
            if lacking:
                problems.append(
                    f"jobs.{job.name}.disk: {job.disk} is a passed-through device that some "
                    f"guests lack ({len(lacking)} of {len(variants)} have fewer guest.hostdevs)"
                )
            if baseline:
                problems.append(
                    f"jobs.{job.name}.disk: the host baseline runs fio on each disk's backing "
                    "store, and a passed-through device has none on the host (vfio-pci holds "
                    "it): leave out baseline or this job"
                )
            continue
        known = sorted(disk_names) + sorted(hostdev_names)
        problems.append(
            f"jobs.{job.name}.disk: no disk named {job.disk!r} (disks: {', '.join(known)})"
        )
    return problems


def _variants(raw: Mapping[str, Any]) -> tuple[list[Variant], list[str]]:
    """Every case's variant of the matrix and of ``include:``, validated, and the problems."""
    problems: list[str] = []
    variants: list[Variant] = []
    seen: set[str] = set()
    entries = raw.get("include")
    entries = entries if isinstance(entries, list) else []
    entry_index = {e.get("name"): i for i, e in enumerate(entries) if isinstance(e, Mapping)}
    matrix_ids: set[str] = set()
    for params, variant in expand_matrix(raw):
        included = params.get("include")
        cid = case_id(params)
        if included is None:
            matrix_ids.add(cid)
        elif cid in matrix_ids:
            problems.append(
                f"include.{entry_index[included]}.name: {cid!r} is already the id of a case "
                "of the matrix: name the extra case for what makes it differ"
            )
        try:
            variants.append(Variant.model_validate({"params": params, **variant}))
        except ValidationError as exc:
            # A problem an included case shares with the matrix (which comes first) is the
            # spec's and said once; one of its own is said at its entry.
            prefix = "" if included is None else f"include.{entry_index[included]}."
            for line in _problems(exc):
                if line not in seen and f"{prefix}{line}" not in seen:
                    seen.add(f"{prefix}{line}")
                    problems.append(f"{prefix}{line}")
    return variants, problems


def parse_spec(
    raw: Any, *, file: Path | None = None, source: str = "", max_cases: int | None = None
) -> BenchSpec:
    """Validate a spec given as parsed YAML. Raises SpecError naming every wrong field, and
    for a matrix of more than `max_cases` cases (never more than MAX_CASES)."""
    where = str(file) if file else "spec"
    if not isinstance(raw, Mapping):
        raise SpecError(
            f"{where}: a spec is a mapping of keys (name, guest, jobs, ...)",
            file=file,
            hint="see examples/ for complete specs",
        )
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    problems = [f"{k}: unknown key (expected one of: {', '.join(_TOP_KEYS)})" for k in unknown]
    jobs_raw = raw.get("jobs", "reference")
    jobs: list[FioJob] = []
    if jobs_raw == "reference":
        jobs = reference_jobs()
    elif not isinstance(jobs_raw, list):
        problems.append("jobs: expected a list of fio jobs or the word 'reference'")
    else:
        for index, job in enumerate(jobs_raw):
            try:
                jobs.append(FioJob.model_validate(job))
            except ValidationError as exc:
                problems.extend(_problems(exc, f"jobs.{index}."))
    problems += include_problems(raw)
    check_matrix_size(raw, jobs, where=where, file=file, limit=max_cases)
    variants, variant_problems = _variants(raw)
    problems += variant_problems
    net_jobs: list[IperfJob] = []
    net_jobs_raw = raw.get("net_jobs") or []
    if not isinstance(net_jobs_raw, list):
        problems.append("net_jobs: expected a list of iperf3 jobs")
        net_jobs_raw = []
    for index, net_job in enumerate(net_jobs_raw):
        try:
            net_jobs.append(IperfJob.model_validate(net_job))
        except ValidationError as exc:
            problems.extend(_problems(exc, f"net_jobs.{index}."))
    problems += _cross_problems(jobs, net_jobs, variants, baseline=raw.get("baseline") is True)
    if not jobs and not net_jobs and not problems:
        problems.append("jobs: a bench needs at least one fio job or net job")
    if not problems:
        try:
            return BenchSpec.model_validate(
                {
                    "name": raw.get("name", file.stem if file else "spec"),
                    "description": raw.get("description", ""),
                    "runtime_s": raw.get("runtime_s"),
                    "baseline": raw.get("baseline", False),
                    "net_jobs": net_jobs,
                    "repeat": raw.get("repeat", 1),
                    "warmup": raw.get("warmup", False),
                    "jobs": jobs,
                    "variants": variants,
                    "source": source,
                }
            )
        except ValidationError as exc:
            problems.extend(_problems(exc))
    raise SpecError(
        f"{where}: invalid spec",
        file=file,
        problems=problems,
        hint="fix the fields above; `vmlab render SPEC` checks a spec without running it",
    )


def load_spec(path: Path, *, max_cases: int | None = None) -> BenchSpec:
    """Read and validate a spec file (see :mod:`vmlab.spec.source` for what is refused)."""
    text = read_spec_text(path)
    return parse_spec(parse_yaml(text, path), file=path, source=text, max_cases=max_cases)


DEFAULT_LAB = """\
# vmlab's embedded default lab: one scratch file behind three device models.
name: default-lab
description: virtio-blk vs virtio-scsi vs emulated NVMe on the same backing file
runtime_s: 10
guest:
  memory_mib: 512
  cpus: 2
  disks:
    - name: data
      model: [virtio-blk, virtio-scsi, nvme]
      backend: {type: file, format: raw, size: 1G}
      cache: none
      aio: threads
jobs: reference
"""


def default_lab() -> BenchSpec:
    return parse_spec(yaml.safe_load(DEFAULT_LAB), source=DEFAULT_LAB)
