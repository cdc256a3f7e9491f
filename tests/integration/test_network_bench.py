"""Guests on the lab network through the bench: tap and macvtap NICs next to the management
NIC, fio over SSH and iperf3 against a peer in the lab namespace; nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vmlab.bench import BenchOptions, run_bench
from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.spec import parse_spec

pytestmark = [pytest.mark.integration, pytest.mark.root]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def test_tap_and_macvtap_guests_run_fio_and_iperf3(
    guest_image: GuestImage, lab_env: dict[str, str], qemu_pids: Callable[[str], list[int]]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("lab networks need root")
    before_ns, before_links = namespaces(), links()
    before_dev = set(Path("/dev").glob("tap*"))
    text = """
name: net
guest:
  nics: [[{name: lab0, attach: tap}], [{name: lab0, attach: macvtap}]]
jobs:
  - {name: qd1, rw: randread, runtime_s: 1}
net_jobs:
  - {name: tx, nic: lab0, duration_s: 2}
  - {name: rx, nic: lab0, duration_s: 2, reverse: true}
"""
    outcome = run_bench(
        parse_spec(yaml.safe_load(text), source=text),
        facts=check_host(),
        image=guest_image,
        options=BenchOptions(results_root=Path(lab_env["RESULTS"])),
    )
    assert outcome.ok, outcome.failed
    got = {(r.case_id, r.job): r.metrics for r in outcome.results}
    assert set(got) == {(c, j) for c in ("tap", "macvtap") for j in ("qd1", "tx", "rx")}
    for case in ("tap", "macvtap"):
        assert got[(case, "qd1")]["read_iops"] > 0
        for job in ("tx", "rx"):
            assert got[(case, job)]["received_bits_per_s"] > 1e6, (case, job)
        record = json.loads((outcome.run.path / "cases" / case / "network.json").read_text())
        assert record["nics"][0]["attach"] == case
        raw = outcome.run.path / "cases" / case / "jobs" / "tx" / "r1" / "iperf.json"
        assert '"end"' in raw.read_text()
    assert namespaces() == before_ns
    assert links() == before_links
    assert set(Path("/dev").glob("tap*")) == before_dev
    assert qemu_pids(str(outcome.run.path)) == []
