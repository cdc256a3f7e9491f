"""Synthetic run directories, laid out as vmlab.bench writes them, with chosen metric values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Cells = Mapping[tuple[str, str], Mapping[str, Sequence[float]]]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_run(
    root: Path,
    run_id: str,
    cells: Cells,
    *,
    name: str | None = None,
    status: str = "complete",
    warmup: Cells | None = None,
    case_status: Mapping[str, str] | None = None,
    case_params: Mapping[str, Mapping[str, str]] | None = None,
    host: str | None = None,
) -> Path:
    """A run whose (case, job) cells hold ``metric -> values`` (one value per repetition r1..rN);
    ``warmup`` cells are written as r0."""
    run = root / run_id
    jobs = list(dict.fromkeys(job for _, job in cells))
    cases = list(dict.fromkeys(case for case, _ in cells))
    for case in case_status or {}:
        if case not in cases:
            cases.append(case)
    _write(
        run / "spec.json",
        {
            "name": name or run_id,
            "description": "synthetic",
            "runtime_s": 1,
            "jobs": [{"name": j, "rw": "randrw", "iodepth": 1, "direct": True} for j in jobs],
            "variants": [],
        },
    )
    failed = {c: "boom" for c, s in (case_status or {}).items() if s == "failed"}
    _write(
        run / "status.json",
        {
            "status": status,
            "started": "2024-06-01T10:00:00+00:00",
            "finished": "2024-06-01T11:00:00+00:00",
            "cases": cases,
            "failed": failed,
        },
    )
    if host:
        _write(run / "host.json", {"hostname": host})
    for case in cases:
        params = dict((case_params or {}).get(case, {"disks.0.model": case}))
        _write(run / "cases" / case / "case.json", {"id": case, "params": params, "variant": {}})
        state = (case_status or {}).get(case, "ok")
        extra = {"error": "boom"} if state == "failed" else {}
        _write(run / "cases" / case / "status.json", {"status": state, **extra})
    for (case, job), metrics in cells.items():
        count = max(len(v) for v in metrics.values())
        for rep in range(count):
            values = {m: float(v[rep]) for m, v in metrics.items() if rep < len(v)}
            _write(
                run / "cases" / case / "jobs" / job / f"r{rep + 1}" / "summary.json",
                {"metrics": values, "fio": None},
            )
    for (case, job), metrics in (warmup or {}).items():
        values = {m: float(v[0]) for m, v in metrics.items()}
        _write(
            run / "cases" / case / "jobs" / job / "r0" / "summary.json",
            {"metrics": values, "fio": None},
        )
    return run


def normal(mean: float, sd: float, n: int, seed: int) -> list[float]:
    """n draws of N(mean, sd), reproducible."""
    return [float(x) for x in np.random.default_rng(seed).normal(mean, sd, n)]


FIO_333 = Path(__file__).resolve().parents[1] / "data" / "fio" / "fio-3.33"
LAB = {
    "host-baseline": ["randrw-jsonplus.json", "randrw.json", "randread.json"],
    "virtio-blk": ["randrw-lat-percentiles.json", "randrw-normal-json.txt", "status-interval.txt"],
}


def lab_run(results: Path, *, evil: str = "", warmup: bool = True) -> Path:
    """A run built from real fio 3.33 output: a host baseline and one guest configuration,
    jobs ``randrw-mix90`` and ``randread``, an argv.sh per case (holding ``evil``), a warm-up r0
    with absurd numbers on virtio-blk."""
    from vmlab.results.importer import group_folder, read_units, write_import
    from vmlab.results.rundir import read_summary

    cases = []
    for case_id, files in LAB.items():
        units = [u for f in files for u in read_units(FIO_333 / f)[0]]
        cases.append(group_folder(units, case_id, FIO_333))
    run = write_import(results, cases, name="lab", source=FIO_333).path
    for case_id in LAB:
        argv = f"qemu-system-x86_64 -name {case_id} -drive file=/tmp/disk{evil}.img\n"
        (run / "cases" / case_id / "argv.sh").write_text(argv)
    params = run / "cases" / "virtio-blk" / "case.json"
    meta = json.loads(params.read_text())
    meta["params"]["note"] = f"tuned{evil}"
    params.write_text(json.dumps(meta))
    if warmup:
        r0 = run / "cases" / "virtio-blk" / "jobs" / "randrw-mix90" / "r0"
        r0.mkdir(parents=True)  # an unpacked r0 beside the import's packed r1...: both are read
        summary = read_summary(r0.parent / "r1")
        summary["metrics"] = {k: v * 1000 for k, v in summary["metrics"].items()}
        (r0 / "summary.json").write_text(json.dumps(summary))
    return run
