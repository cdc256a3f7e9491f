"""Wall time of `vmlab fleet run` on two hosts against the same run on one host, measured in the
same run (a ratio is meaningful; seconds depend on the machine), and the same spec run by
`vmlab bench` directly (what Ansible adds).

The hosts are network namespaces with their own sshd on this machine
(tests/integration/testhosts.py): both run their guests here, so on 2 cores two TCG guests
compete and the two-host ratio shows how much of the fleet run is really parallel (1.00 =
perfectly, 2.00 = not at all).

    .venv/bin/python benchmarks/fleet.py [--runs 1] [--runtime 2]

Needs root, iproute2, openssh-server and vmlab[fleet].
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmlab.fleet.run import FleetOptions, run_fleet
from vmlab.guest.image import build_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from testhosts import TestHosts  # test infrastructure, not in the vmlab package

BIN = Path(sys.executable).parent
SPEC = """\
name: fleet-bench
runtime_s: {runtime}
guest:
  memory_mib: 512
  cpus: 1
  disks:
    - name: data
      model: virtio-blk
      backend: {{type: file, format: raw, size: 64M}}
jobs:
  - {{name: randread, disk: data, rw: randread, bs: 4k, iodepth: 1}}
"""


def task_times(run: Path) -> list[tuple[str, dict[str, float], float]]:
    """From ansible-runner's events of a fleet run: per task (in the order they started), each
    host's seconds in it and the wall span from the first host's start to the last one's end.
    A task whose span is well over its hosts' seconds is where they waited for each other."""
    spans: dict[str, dict[str, tuple[dt.datetime, dt.datetime]]] = {}
    for path in sorted((run / "ansible").glob("artifacts/*/job_events/*.json")):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if not event.get("event", "").startswith("runner_on_") or not data.get("start"):
            continue
        start = dt.datetime.fromisoformat(data["start"])
        end = dt.datetime.fromisoformat(data["end"])
        spans.setdefault(data.get("task", "?"), {})[data["host"]] = (start, end)
    rows = []
    for task, hosts in sorted(spans.items(), key=lambda t: min(s for s, _ in t[1].values())):
        per_host = {h: (e - s).total_seconds() for h, (s, e) in hosts.items()}
        wall = max(e for _, e in hosts.values()) - min(s for s, _ in hosts.values())
        rows.append((task, per_host, wall.total_seconds()))
    return rows


def print_task_times(label: str, rows: list[tuple[str, dict[str, float], float]]) -> None:
    hosts = sorted({h for _, per_host, _ in rows for h in per_host})
    print(f"\n{label}: seconds per task and host (ansible-runner events), and its wall span")
    print(f"  {'task':44} " + " ".join(f"{h:>7}" for h in hosts) + f" {'span':>7}")
    for task, per_host, wall in rows:
        cells = " ".join(f"{per_host[h]:7.2f}" if h in per_host else f"{'-':>7}" for h in hosts)
        print(f"  {task[:44]:44} {cells} {wall:7.2f}")


def fleet_once(inventory: Path, spec: Path, results: Path, limit: str | None) -> tuple[float, Path]:
    started = time.monotonic()
    outcome = run_fleet(
        FleetOptions(
            inventory=inventory,
            spec=spec,
            results_root=results,
            limit=limit,
            bench_args=["--timeout-scale", "2"],
        )
    )
    seconds = time.monotonic() - started
    if not outcome.ok:
        raise SystemExit(f"fleet run failed: {[(h.host, h.error) for h in outcome.failed]}")
    return seconds, outcome.run.path


def bench_once(spec: Path, results: Path, env_root: Path) -> float:
    env_dirs = {n: env_root / n for n in ("state", "runtime", "scratch")}
    for d in env_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    argv = [str(BIN / "vmlab"), "bench", str(spec), "--ci", "--timeout-scale", "2"]
    subprocess.run(
        [*argv, "--results", str(results)],
        check=True,
        capture_output=True,
        timeout=900,
        env={
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(Path.home()),
            "VMLAB_STATE": str(env_dirs["state"]),
            "VMLAB_RUNTIME": str(env_dirs["runtime"]),
            "VMLAB_SCRATCH": str(env_dirs["scratch"]),
        },
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="rounds (each: 1 host, 2 hosts)")
    parser.add_argument("--runtime", type=int, default=2, help="seconds of the one fio job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    build_image()  # cached: not part of any measurement
    with tempfile.TemporaryDirectory(prefix="vmlab-fleet-bench-") as tmp:
        root = Path(tmp)
        spec = root / "spec.yaml"
        spec.write_text(SPEC.format(runtime=args.runtime))
        times: dict[str, list[float]] = {
            "vmlab bench": [],
            "fleet, 1 host": [],
            "fleet, 2 hosts": [],
        }
        with TestHosts(["hv-a", "hv-b"]) as hosts:
            inventory = root / "inventory.json"
            inventory.write_text(json.dumps(hosts.vmlab_inventory(root, vmlab_bin=BIN / "vmlab")))
            breakdown: dict[str, list[tuple[str, dict[str, float], float]]] = {}
            for n in range(args.runs):
                times["vmlab bench"].append(bench_once(spec, root / "local", root / "local-env"))
                for label, limit in (("fleet, 1 host", "hv-a"), ("fleet, 2 hosts", None)):
                    seconds, run = fleet_once(inventory, spec, root / f"{label[7]}-{n}", limit)
                    times[label].append(seconds)
                    breakdown[label] = task_times(run)  # the last round's
    for label, rows in breakdown.items():
        print_task_times(label, rows)
    print()
    base = statistics.median(times["fleet, 1 host"])
    print(f"{'':16} {'median s':>9} {'× 1 host':>9}  runs")
    for name, values in times.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:16} {median:9.1f} {median / base:9.2f}  {runs}")


if __name__ == "__main__":
    main()
