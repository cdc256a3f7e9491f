from __future__ import annotations

import xml.etree.ElementTree as ET

from vmlab.report.bench_junit import bench_junit


def test_one_testcase_per_case_and_job_with_failures_and_skips() -> None:
    text = bench_junit(
        "lab",
        [
            ("nvme", "latency", 1, {"read_iops": 100.0}),
            ("nvme", "latency", 0, {"read_iops": 1.0}),
            ("nvme", "throughput", 1, {"read_iops": 900.0}),
        ],
        failed={"virtio-blk": "QEMU exited with status 1"},
        unsupported={"spdk": ["no SPDK RPC socket"]},
        jobs=["latency", "throughput"],
    )
    suite = ET.fromstring(text.split("?>", 1)[1])
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "2", "2")
    by = {(t.get("classname"), t.get("name")): t for t in suite.iter("testcase")}
    assert by[("nvme", "latency")].find("failure") is None
    assert "read_iops=100" in (by[("nvme", "latency")].findtext("system-out") or "")
    assert "r2" not in (by[("nvme", "latency")].findtext("system-out") or "")  # r0 not counted
    failure = by[("virtio-blk", "throughput")].find("failure")
    assert failure is not None and "QEMU exited" in (failure.get("message") or "")
    assert by[("spdk", "latency")].find("skipped") is not None
