from __future__ import annotations

import pytest

from vmlab.report.table import build_rows, row_values


def test_row_values_weight_latency_by_iops_and_take_worse_p99() -> None:
    iops, mean_us, p99_us = row_values(
        {
            "read_iops": 900.0,
            "write_iops": 100.0,
            "read_lat_mean_ns": 1000.0,
            "write_lat_mean_ns": 11000.0,
            "read_lat_p99_ns": 5000.0,
            "write_lat_p99_ns": 20000.0,
        }
    )
    assert iops == 1000.0
    assert mean_us == pytest.approx(2.0)
    assert p99_us == pytest.approx(20.0)


def test_row_values_take_the_completion_latency_mean_when_stored() -> None:
    """The p99 is a completion-latency percentile: the mean beside it is too (clat_mean),
    and a summary stored without it still gives its total-latency mean."""
    _, mean_us, _ = row_values(
        {"read_iops": 1.0, "read_lat_mean_ns": 9000.0, "read_clat_mean_ns": 8000.0}
    )
    assert mean_us == pytest.approx(8.0)
    _, mean_us, _ = row_values({"read_iops": 1.0, "read_lat_mean_ns": 9000.0})
    assert mean_us == pytest.approx(9.0)


def test_ratio_is_against_the_first_configuration_of_the_same_job() -> None:
    rows = build_rows(
        [
            ("virtio-blk", "latency", {"read_iops": 100.0}),
            ("virtio-blk", "throughput", {"read_iops": 1000.0}),
            ("nvme", "latency", {"read_iops": 150.0}),
            ("nvme", "throughput", {"read_iops": 500.0}),
        ]
    )
    got = {(r.case_id, r.job): r.ratio for r in rows}
    assert got == {
        ("virtio-blk", "latency"): 1.0,
        ("nvme", "latency"): 1.5,
        ("virtio-blk", "throughput"): 1.0,
        ("nvme", "throughput"): 0.5,
    }
    assert [r.job for r in rows] == ["latency", "latency", "throughput", "throughput"]


def test_repetitions_are_averaged() -> None:
    (row,) = build_rows([("a", "j", {"read_iops": 100.0}), ("a", "j", {"read_iops": 300.0})])
    assert row.iops == 200.0


def test_host_baseline_is_the_limit_column() -> None:
    rows = build_rows(
        [
            ("host-baseline", "latency", {"read_iops": 1000.0}),
            ("virtio-blk", "latency", {"read_iops": 250.0}),
            ("nvme", "latency", {"read_iops": 500.0}),
        ]
    )
    got = {r.case_id: (r.ratio, r.of_host) for r in rows}
    assert got == {"host-baseline": (None, None), "virtio-blk": (1.0, 0.25), "nvme": (2.0, 0.5)}


def test_plain_progress_says_iops_for_fio_and_gbits_for_iperf(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from vmlab.cli.bench import PlainEvents

    case = SimpleNamespace(id="tap")
    PlainEvents().job_finished(case, "qd1", 1, {"read_iops": 900.4, "write_iops": 100.0})
    PlainEvents().job_finished(case, "tcp", 1, {"received_bits_per_s": 1.1e9, "retransmits": 0})
    assert capsys.readouterr().out.splitlines() == [
        "  tap: qd1 r1: 1000 IOPS",
        "  tap: tcp r1: 1.10 Gbit/s",
    ]


def test_fleet_rows_are_a_fraction_of_their_own_hosts_baseline() -> None:
    rows = build_rows(
        [
            ("hv-a_host-baseline", "j", {"read_iops": 1000.0}),
            ("hv-a_default", "j", {"read_iops": 500.0}),
            ("hv-b_host-baseline", "j", {"read_iops": 4000.0}),
            ("hv-b_default", "j", {"read_iops": 1000.0}),
        ]
    )
    got = {r.case_id: (r.of_host, r.ratio) for r in rows}
    assert got["hv-a_default"] == (0.5, 1.0)
    assert got["hv-b_default"] == (0.25, 2.0)
    assert got["hv-a_host-baseline"] == (None, None)
