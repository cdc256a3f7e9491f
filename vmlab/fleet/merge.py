"""Merge the run directories that came back from a fleet into one run with a `host` dimension.

``bench.yml`` leaves, per host, ``<fetch>/<host>/<run-id>/`` (the host's run directory, as
``vmlab bench`` wrote it) and ``<fetch>/<host>/bench.log`` (vmlab's output). The merged run::

    <run>/
      spec.yaml  spec.json     the first host's (the spec exactly as it ran), else the controller's
      fleet.json               hosts, their status and error, where their files came from
      status.json              complete | failed | interrupted; cases; failed cases; hosts
      hosts/<label>.json       the host's facts (its host.json)
      hosts/<label>/           the rest of the host's run: status.json, image.json, bench.log...
      cases/<label>_<case>/    the host's case directory, moved; case.json gains the host
      ansible/                 ansible-runner's artifacts (written there by vmlab.fleet.run)

``<label>`` is the inventory name made safe for a case id (``[a-z0-9.-]``, unique). In
case.json, ``id`` becomes ``<label>_<case>``, ``params`` gains ``"host": <inventory name>``
first, and ``host_case_id`` keeps the id the host gave. Case ids stay readable and stable, so
``vmlab compare`` matches the same host and configuration across two fleet runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vmlab.results.index import INDEX_NAME
from vmlab.results.rundir import RunDir, now_iso, run_dirs

log = logging.getLogger(__name__)

HostStatus = Literal["ok", "failed", "unreachable", "interrupted"]

_UNSAFE = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True)
class HostOutcome:
    """What Ansible says about one host (before its files are looked at)."""

    host: str
    status: HostStatus
    error: str | None = None
    failed_task: str | None = None


@dataclass(frozen=True)
class MergedHost:
    host: str
    label: str
    status: HostStatus
    error: str | None
    failed_task: str | None
    run_id: str | None
    """The host's own run id (None when no run directory came back)."""
    bench_status: str | None
    """status of the host's run: complete, failed, interrupted (None: no run directory)."""
    cases: tuple[str, ...] = ()
    """Merged case ids."""
    failed_cases: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class MergeResult:
    run: RunDir
    hosts: tuple[MergedHost, ...]

    @property
    def failed(self) -> tuple[MergedHost, ...]:
        return tuple(h for h in self.hosts if not h.ok)

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(c for h in self.hosts for c in h.cases)


def host_labels(hosts: Sequence[str]) -> dict[str, str]:
    """Inventory name -> a unique label safe for case ids and file names (``[a-z0-9.-]``)."""
    labels: dict[str, str] = {}
    taken: set[str] = set()
    for host in hosts:
        base = _UNSAFE.sub("-", host.lower()).strip("-.") or "host"
        label, n = base, 1
        while label in taken:
            n += 1
            label = f"{base}-{n}"
        taken.add(label)
        labels[host] = label
    return labels


def merged_case_id(label: str, case_id: str) -> str:
    return f"{label}_{case_id}"


def find_host_run(host_dir: Path) -> RunDir | None:
    """The run directory a host sent back (the newest, if there are several)."""
    if not host_dir.is_dir():
        return None
    runs = run_dirs(host_dir)
    if len(runs) > 1:
        log.warning(
            "%s holds %d run directories; merging the newest, %s", host_dir, len(runs), runs[-1]
        )
    return RunDir.open(runs[-1]) if runs else None


def _dict(data: Any) -> dict[str, Any]:
    return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}


def _merge_host(
    run: RunDir, outcome: HostOutcome, label: str, host_dir: Path
) -> tuple[MergedHost, Path | None]:
    source = find_host_run(host_dir)
    merged = MergedHost(
        host=outcome.host,
        label=label,
        status=outcome.status,
        error=outcome.error,
        failed_task=outcome.failed_task,
        run_id=None,
        bench_status=None,
    )
    if source is None:
        if host_dir.is_dir():  # bench.log and whatever else came back
            run.keep_host_files(label, host_dir)
        if outcome.status == "ok":
            merged = replace(
                merged,
                status="failed",
                error=f"no run directory came back from {outcome.host} (looked in {host_dir})",
            )
        return merged, None
    status = source.status()
    listed = [str(c) for c in status.get("cases", []) if isinstance(c, str)]
    on_disk = source.case_ids_on_disk()
    failed = _dict(status.get("failed"))
    moved: list[str] = []
    for case_id in [*listed, *(c for c in on_disk if c not in listed)]:
        new_id = merged_case_id(label, case_id)
        moved.append(new_id)
        if source.case(case_id).exists():
            run.adopt_case(source.case(case_id), new_id, host=outcome.host)
    # bench.log beside the run directory; the host's index is a cache, dropped
    extra = [p for p in host_dir.iterdir() if p != source.path and p.name != INDEX_NAME]
    keep = run.adopt_host(source, label, extra)
    merged = replace(
        merged,
        run_id=source.run_id,
        bench_status=str(status.get("status", "unknown")),
        cases=tuple(moved),
        failed_cases={merged_case_id(label, str(k)): str(v) for k, v in failed.items()},
    )
    if outcome.status == "ok" and merged.bench_status not in ("complete",):
        merged = replace(
            merged,
            status="failed",
            error=f"the run on {outcome.host} ended {merged.bench_status}",
        )
    return merged, keep


def merge_fleet(
    run: RunDir,
    fetch_dir: Path,
    outcomes: Sequence[HostOutcome],
    *,
    fallback_spec: Mapping[str, Any],
    fallback_spec_yaml: str,
    meta: Mapping[str, Any] | None = None,
    interrupted: bool = False,
) -> MergeResult:
    """Move what each host sent back (``fetch_dir/<host>/``) into ``run``; write spec.json,
    fleet.json and status.json. ``fallback_spec``/``fallback_spec_yaml``: the controller's spec,
    written when no host sent its own. Hosts that came back with nothing are kept in fleet.json
    with their error."""
    labels = host_labels([o.host for o in outcomes])
    merged: list[MergedHost] = []
    spec_from: Path | None = None
    for outcome in outcomes:
        host, kept = _merge_host(run, outcome, labels[outcome.host], fetch_dir / outcome.host)
        merged.append(host)
        if spec_from is None and kept is not None and run.copy_spec_from(kept):
            spec_from = kept
    if spec_from is None:
        run.write_json("spec.json", dict(fallback_spec))
        run.write_text("spec.yaml", fallback_spec_yaml)
    result = MergeResult(run=run, hosts=tuple(merged))
    run.write_fleet(
        {
            **dict(meta or {}),
            "spec_from": spec_from.name if spec_from is not None else "controller",
            "hosts": [
                {
                    "host": h.host,
                    "label": h.label,
                    "status": h.status,
                    "error": h.error,
                    "failed_task": h.failed_task,
                    "run_id": h.run_id,
                    "bench_status": h.bench_status,
                    "cases": list(h.cases),
                    "failed_cases": dict(h.failed_cases),
                }
                for h in merged
            ],
        },
    )
    failed_cases = {k: v for h in merged for k, v in h.failed_cases.items()}
    overall = "interrupted" if interrupted else ("complete" if not result.failed else "failed")
    run.set_status(
        overall,
        finished=now_iso(),
        cases=list(result.cases),
        failed=failed_cases,
        hosts={h.host: h.status for h in merged},
        failed_hosts={h.host: h.error or h.status for h in result.failed},
    )
    return result
