"""Reading a spec: parsed YAML in, every variant of its matrix validated, one BenchSpec out.

Problems are collected rather than raised one by one: the :class:`SpecError` names every wrong
field with its path. ``DEFAULT_LAB`` is the spec vmlab runs when it is given none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vmlab.errors import SpecError
from vmlab.spec.matrix import _VARIANT_KEYS, expand_matrix
from vmlab.spec.models import BenchSpec, FioJob, IperfJob, Variant, reference_jobs

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
)


def _problems(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if p not in ("function-after",))
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = item.get("input")
        shown = "" if isinstance(got, Mapping | list) or got is None else f" (got {got!r})"
        lines.append(f"{where}: {item['msg']}{shown}")
    return lines


def parse_spec(raw: Any, *, file: Path | None = None, source: str = "") -> BenchSpec:
    """Validate a spec given as parsed YAML. Raises SpecError naming every wrong field."""
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
    variants: list[Variant] = []
    seen: set[str] = set()
    for params, variant in expand_matrix(raw):
        try:
            variants.append(Variant.model_validate({"params": params, **variant}))
        except ValidationError as exc:
            for line in _problems(exc):
                if line not in seen:
                    seen.add(line)
                    problems.append(line)
    net_jobs: list[IperfJob] = []
    for index, net_job in enumerate(raw.get("net_jobs") or []):
        try:
            net_jobs.append(IperfJob.model_validate(net_job))
        except ValidationError as exc:
            problems.extend(_problems(exc, f"net_jobs.{index}."))
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
    if not jobs and not net_jobs:
        problems.append("jobs: a bench needs at least one fio job or net job")
    disk_names = {d.name for v in variants for d in v.guest.disks}
    for job in jobs:
        if variants and job.disk not in disk_names:
            problems.append(
                f"jobs.{job.name}.disk: no disk named {job.disk!r} "
                f"(disks: {', '.join(sorted(disk_names))})"
            )
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


def load_spec(path: Path) -> BenchSpec:
    """Read and validate a spec file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(
            f"{path}: cannot read spec: {exc.strerror}", file=path, hint="check the path"
        ) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}",
            file=path,
            hint="check indentation and quoting",
        ) from exc
    return parse_spec(raw, file=path, source=text)


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
