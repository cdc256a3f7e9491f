"""Wall time of `vmlab bench` (the default lab: 3 cases x 2 fio jobs x 10 s) against the fio
runtime it asks for, measured in the same run (a ratio is meaningful; seconds depend on the
machine), with where the rest went: each case's stages (from its status.json timings) and what
the command spends outside its cases (Python start, host check, image lookup, index).

    .venv/bin/python benchmarks/lab.py [--runs 3] [--runtime 10]

The guest image and the accelerator verdict are cached (as for a user's second run).
"""

from __future__ import annotations

import argparse
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


def bench_once(results: Path, runtime: int | None) -> tuple[float, Path]:
    argv = [sys.executable, "-m", "vmlab.cli", "bench", "--ci", "--results", str(results)]
    if runtime is not None:
        argv += ["--runtime", str(runtime)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"vmlab bench exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return wall, run


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runtime", type=int, default=None, help="seconds per fio job")
    args = parser.parse_args()
    build_image()  # cached: not part of any measurement
    ratios: list[float] = []
    stage_s: dict[str, list[float]] = defaultdict(list)
    outside: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmlab-lab-bench-") as tmp:
        for n in range(args.runs):
            wall, run = bench_once(Path(tmp) / f"r{n}", args.runtime)
            cases = [case_stages(c.timings) for c in scan_run(run).cases]
            asked = sum(s.seconds for stages in cases for s in stages if not s.overhead)
            in_cases = sum(s.seconds for stages in cases for s in stages)
            for stages in cases:
                for s in stages:
                    stage_s[s.name].append(s.seconds)
                stage_s["case overhead"].append(overhead_s(stages))
            outside.append(wall - in_cases)
            ratios.append(wall / asked)
            print(
                f"run {n + 1}: wall {wall:.1f} s, asked fio runtime {asked:.0f} s, "
                f"ratio {wall / asked:.2f}; in cases {in_cases:.1f} s, "
                f"outside {wall - in_cases:.1f} s",
                flush=True,
            )
    print(f"\ndefault lab wall / Σ fio runtime: {spread(ratios)}  over {args.runs} runs")
    print(f"outside the cases (s):             {spread(outside)}")
    print("\nper case, every case of every run (s):")
    for name, values in stage_s.items():
        print(f"  {name:38} {spread(values)}")


if __name__ == "__main__":
    main()
