"""Wall time of `vmlab bench` (the default lab: 3 cases x 2 fio jobs x 10 s) against the fio
runtime it asks for, measured in the same run (a ratio is meaningful; seconds depend on the
machine), with where the rest went: each case's stages (from its status.json timings) and what
the command spends outside its cases (Python start, host check, image lookup, index).

    .venv/bin/python benchmarks/lab.py [--runs 3] [--runtime 10] [--against DIR]

With ``--against DIR`` (a checkout of another vmlab version, e.g. ``git archive BASE | tar -x
-C DIR``) each round also runs that version's `vmlab bench`, alternating, and prints both.
The guest image and the accelerator verdict are cached (as for a user's second run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from vmlab.guest.image import build_image
from vmlab.report.stages import case_stages, overhead_s
from vmlab.results.rundir import scan_run

HERE = Path(__file__).resolve().parent.parent


def bench_once(results: Path, runtime: int | None, tree: Path) -> tuple[float, Path]:
    argv = [sys.executable, "-m", "vmlab.cli", "bench", "--ci", "--results", str(results)]
    if runtime is not None:
        argv += ["--runtime", str(runtime)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, check=False, cwd=tree, env=env
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"vmlab bench exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return wall, run


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


class Tally:
    """One vmlab version's runs: ratios, time outside the cases, each stage's seconds."""

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.outside: list[float] = []
        self.stages: dict[str, list[float]] = defaultdict(list)

    def add(self, label: str, wall: float, run: Path) -> None:
        records = scan_run(run).cases
        cases = [case_stages(c.timings) for c in records]
        timed = all("total_s" in c.timings for c in records)  # runs of older vmlab: not all
        in_cases = sum(s.seconds for stages in cases for s in stages)
        # Σ fio runtime: what the spec asks (3 cases x 2 jobs x runtime), from the run's spec
        asked = asked_runtime_s(run)
        for stages in cases:
            for s in stages:
                self.stages[s.name].append(s.seconds)
            self.stages["case overhead"].append(overhead_s(stages))
        if timed:
            self.outside.append(wall - in_cases)
        self.ratios.append(wall / asked)
        print(
            f"{label}: wall {wall:.1f} s, asked fio runtime {asked:.0f} s, "
            f"ratio {wall / asked:.2f}; in cases {in_cases:.1f} s, outside {wall - in_cases:.1f} s",
            flush=True,
        )

    def report(self, title: str) -> None:
        print(f"\n{title}: default lab wall / Σ fio runtime {spread(self.ratios)}")
        if self.outside:
            print(f"  outside the cases (s):             {spread(self.outside)}")
        print("  per case, every case of every run (s):")
        for name, values in self.stages.items():
            print(f"    {name:38} {spread(values)}")


def asked_runtime_s(run: Path) -> float:
    record = scan_run(run)
    spec = json.loads((run / "spec.json").read_text())
    runtime = spec.get("runtime_s")
    per_case = sum(runtime or job.get("runtime_s", 0) for job in spec["jobs"])
    return float(per_case * len(record.cases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runtime", type=int, default=None, help="seconds per fio job")
    parser.add_argument("--against", type=Path, default=None, help="another vmlab tree")
    args = parser.parse_args()
    build_image()  # cached: not part of any measurement
    trees = {"this tree": HERE}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    tallies = {name: Tally() for name in trees}
    with tempfile.TemporaryDirectory(prefix="vmlab-lab-bench-") as tmp:
        for n in range(args.runs):
            for name, tree in trees.items():
                wall, run = bench_once(
                    Path(tmp) / f"{name}-{n}".replace(" ", "-"), args.runtime, tree
                )
                tallies[name].add(f"run {n + 1} ({name})", wall, run)
    for name, tally in tallies.items():
        tally.report(f"{name} ({trees[name]})")
    if len(tallies) == 2:
        mine, other = (statistics.median(t.ratios) for t in tallies.values())
        print(f"\nthis tree / against, median ratio: {mine / other:.2f}")


if __name__ == "__main__":
    main()
