"""Running a bench, one module per step:

- :mod:`~vmlab.bench.run`: the orchestration (cases in turn, resume, one accelerator per run);
- :mod:`~vmlab.bench.case`: one case's lifecycle, everything in one ExitStack;
- :mod:`~vmlab.bench.reach`: every readiness stage of a booted guest;
- :mod:`~vmlab.bench.workloads`: fio and iperf3 jobs inside the guest;
- :mod:`~vmlab.bench.baseline`: fio on the host, the limit;
- :mod:`~vmlab.bench.events` and :mod:`~vmlab.bench.outcome`: what a front end hears and gets.
"""

from __future__ import annotations

from vmlab.bench.events import BenchEvents, QuietEvents
from vmlab.bench.outcome import BenchOptions, BenchOutcome, JobOutcome
from vmlab.bench.run import Bench, run_bench

__all__ = [
    "Bench",
    "BenchEvents",
    "BenchOptions",
    "BenchOutcome",
    "JobOutcome",
    "QuietEvents",
    "run_bench",
]
