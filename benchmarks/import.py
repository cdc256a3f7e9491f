"""Benchmark `vmlab import` on 10,000 fio JSON files against plain json.load of the same files.

Generates the files (byte copies of the real samples in tests/data/fio, one in ten with a fio
warning line in front of the JSON, as captured stdout often has) into a temporary tree of
100 folders x 100 files, then times, in the same run:

- baseline: ``json.load`` of every file (files with text in front: ``json.loads`` from the "{");
- parse: ``vmlab.fio.parse.parse_fio_file`` of every file (typed models, no writing);
- import: ``vmlab.results.importer.import_tree`` (parse, infer parameters, copy the raw file,
  write summary.json and the run directories, index them in SQLite).

Then the results index at 10,000 runs (``--runs``; each a real imported run of one file): the
wall time of the commands ``vmlab results list`` (the index is synced with the run directories
first, then every run printed) and ``vmlab compare`` of two of them, each against ``vmlab
version`` (the same interpreter and CLI start-up) and against the same command on a results
root of 10 runs; issue 18 asks for under 0.5 s.

Each of the three is timed ``--repeat`` times, the rounds interleaved, and its median kept. The
import runs with its default worker processes (one per CPU); json.load and parse in this one.

Prints each time and its ratio to the baseline. Not a test: nothing is asserted.

    .venv/bin/python benchmarks/import.py [--files 10000] [--folders 100] [--runs 10000]
                                          [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmlab.fio.parse import parse_fio_file
from vmlab.results.importer import default_workers, import_tree

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "fio"
NOISE = b"fio: this platform does not support process shared mutexes, forcing use of threads\n"


def samples() -> list[Path]:
    found = sorted((DATA / "fio-2.18-ssd").glob("*.json"))
    found += sorted((DATA / "fio-3.1-raid-ssd").glob("*.json"))
    found += sorted((DATA / "fio-3.33").glob("*.json"))
    return found


def generate(root: Path, files: int, folders: int) -> list[Path]:
    sources = [(p, p.read_bytes()) for p in samples()]
    written = []
    per_folder = -(-files // folders)
    for i in range(files):
        source, data = sources[i % len(sources)]
        folder = root / f"host{i // per_folder:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:05d}-{source.stem}.json"
        target.write_bytes(NOISE + data if i % 10 == 9 else data)
        written.append(target)
    return written


def load_plain(paths: list[Path]) -> int:
    jobs = 0
    for path in paths:
        with path.open("rb") as fh:
            raw = fh.read()
        doc = json.loads(raw[raw.index(b"{") :]) if raw[:1] != b"{" else json.loads(raw)
        jobs += len(doc.get("jobs") or doc.get("client_stats") or [])
    return jobs


def command_s(*args: str, repeat: int = 3) -> float:
    """Median wall time of ``vmlab ARGS`` (a new process, as a user runs it)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vmlab.cli", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def index_bench(tmp: Path, runs: int) -> None:
    source = samples()[0]
    roots = {}
    for count in (10, runs):
        tree = tmp / f"runs-{count}"
        for i in range(count):
            folder = tree / f"run{i:05d}"
            folder.mkdir(parents=True)
            shutil.copyfile(source, folder / source.name)
        start = time.perf_counter()
        result = import_tree(tree, tmp / f"results-{count}")
        print(f"  ({count} runs imported in {time.perf_counter() - start:.1f} s)")
        roots[count] = (tmp / f"results-{count}", [r.run_id for r in result.runs])
    startup = command_s("version")
    print(f"results index: {runs} runs, each command a new process (median of 3)")
    print(f"  {'':28} {'seconds':>8} {'x start-up':>10} {'x 10 runs':>10}")
    print(f"  {'vmlab version (start-up)':28} {startup:8.2f} {1.0:10.1f}")
    for label, args in (
        ("vmlab results list", lambda root, ids: ["results", "list", "--results", str(root)]),
        (
            "vmlab compare A B",
            lambda root, ids: ["compare", ids[0], ids[-1], "--results", str(root)],
        ),
    ):
        small = command_s(*args(*roots[10]))
        big = command_s(*args(*roots[runs]))
        print(f"  {label:28} {big:8.2f} {big / startup:10.1f} {big / small:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the index bench")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each stage (median)")
    args = parser.parse_args()
    workers = default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="vmlab-bench-import-"))
    try:
        tree = tmp / "tree"
        paths = generate(tree, args.files, args.folders)
        size_mib = sum(p.stat().st_size for p in paths) / 2**20
        load_plain(paths)  # warm the page cache so no stage pays for the disk
        jobs = load_plain(paths)

        def parse_all() -> None:
            for path in paths:
                parse_fio_file(path)

        imported = []

        def import_all() -> None:
            imported.append(import_tree(tree, tmp / f"results-{len(imported)}"))

        # Each stage's median of --repeat rounds, interleaved so that a slow spell of the
        # machine touches every stage alike.
        rounds: dict[str, list[float]] = {"baseline": [], "parse": [], "import": []}
        for _ in range(args.repeat):
            for stage, work in (
                ("baseline", lambda: load_plain(paths)),
                ("parse", parse_all),
                ("import", import_all),
            ):
                start = time.perf_counter()
                work()
                rounds[stage].append(time.perf_counter() - start)
        baseline_s, parse_s, import_s = (statistics.median(rounds[s]) for s in rounds)
        result = imported[0]

        print(
            f"{len(paths)} files ({size_mib:.1f} MiB, {jobs} fio jobs) in {args.folders} folders;"
            f" median of {args.repeat} rounds, import with {workers} worker processes"
        )
        print(f"  json.load          {baseline_s:8.2f} s   1.0x")
        print(f"  parse_fio_file     {parse_s:8.2f} s   {parse_s / baseline_s:5.1f}x")
        print(f"  vmlab import       {import_s:8.2f} s   {import_s / baseline_s:5.1f}x")
        print(
            f"  -> {len(result.runs)} runs, {len(result.rejected)} files rejected, "
            f"{import_s / len(paths) * 1000:.2f} ms per file imported"
        )
        if args.runs:
            index_bench(tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
