"""Compare and gate: cell matching, rules, verdicts and exit codes with synthetic repetitions."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from runs_fixture import make_run, normal
from typer.testing import CliRunner, Result

from vmlab.cli.report import GATE_FAILED, app
from vmlab.errors import ResultError, SpecError
from vmlab.report.compare import compare_runs, load_rules, parse_rule
from vmlab.report.render import compare_junit
from vmlab.results.rundir import scan_run

N = 8


def _cells(
    iops_mean: float, lat_mean: float, seed: int, n: int = N
) -> dict[tuple[str, str], dict[str, list[float]]]:
    return {
        ("virtio-blk", "latency"): {
            "read_iops": normal(iops_mean, iops_mean * 0.02, n, seed),
            "read_lat_p99_ns": normal(lat_mean, lat_mean * 0.02, n, seed + 100),
        },
        ("nvme", "latency"): {
            "read_iops": normal(20_000, 400, n, seed + 200),
            "read_lat_p99_ns": normal(80_000, 1_600, n, seed + 300),
        },
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    return root


def test_parse_rules() -> None:
    drop = parse_rule("read_iops:-5%")
    assert (drop.metric, drop.limit_pct, drop.direction) == ("read_iops", 5.0, -1)
    assert drop.breached(-6.0) and not drop.breached(-4.0) and not drop.breached(+30.0)
    rise = parse_rule("read_lat_p99_ns:+10%")
    assert rise.direction == 1 and rise.breached(10.5) and not rise.breached(-50)
    assert parse_rule("read_iops:5%").direction == -1  # IOPS: worse is down
    assert parse_rule("write_lat_mean_ns: 2.5").direction == 1  # latency: worse is up
    with pytest.raises(SpecError):
        parse_rule("read_iops<5%")
    with pytest.raises(SpecError) as info:
        parse_rule("read_iop:-5%")
    assert info.value.hint and "read_iops" in info.value.hint


def test_network_metrics_are_rules_too() -> None:
    # iperf3's metrics live in the same vocabulary as fio's: a network gate is accepted.
    gate = parse_rule("received_bits_per_s:-5%")
    assert (gate.metric, gate.direction) == ("received_bits_per_s", -1)
    assert parse_rule("retransmits:10%").direction == 1  # retransmits: worse is up


def test_load_rules_from_yaml_and_json(tmp_path: Path) -> None:
    listed = tmp_path / "rules.yaml"
    listed.write_text("rules:\n  - read_iops:-5%\n  - read_lat_p99_ns:+10%\n")
    assert [r.label for r in load_rules(listed)] == ["read_iops:-5%", "read_lat_p99_ns:+10%"]
    mapping = tmp_path / "rules.json"
    mapping.write_text(json.dumps({"write_iops": "-3%", "read_lat_mean_ns": 20}))
    assert [r.label for r in load_rules(mapping)] == ["write_iops:-3%", "read_lat_mean_ns:+20%"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: 5\n")
    with pytest.raises(SpecError) as info:
        load_rules(bad)
    assert info.value.file == bad


def test_same_distribution_holds_the_gate(results: Path) -> None:
    base = scan_run(make_run(results, "base", _cells(10_000, 100_000, seed=1)))
    cand = scan_run(make_run(results, "cand", _cells(10_000, 100_000, seed=2)))
    result = compare_runs(base, [cand], rules=[parse_rule("read_iops:-5%")])
    iops = [c for c in result.cells if c.metric == "read_iops"]
    assert len(iops) == 2
    assert {c.comparison.verdict for c in iops} == {"no significant difference"}
    assert [c.status for c in result.checks] == ["pass", "pass"]
    assert result.gate_passed()


def test_twenty_percent_drop_is_a_significant_regression(results: Path) -> None:
    base = scan_run(make_run(results, "base", _cells(10_000, 100_000, seed=1)))
    cand = scan_run(make_run(results, "cand", _cells(8_000, 100_000, seed=2)))
    result = compare_runs(
        base, [cand], rules=[parse_rule("read_iops:-5%"), parse_rule("read_lat_p99_ns:+10%")]
    )
    blk = {
        c.metric: c.comparison
        for c in result.cells
        if c.case_id == "virtio-blk" and c.job == "latency"
    }
    assert blk["read_iops"].verdict == "regression"
    assert blk["read_iops"].delta_pct == pytest.approx(-20, abs=3)
    assert blk["read_iops"].p_value is not None and blk["read_iops"].p_value < 1e-6
    failed = result.failed
    assert [(f.case_id, f.rule.metric) for f in failed] == [("virtio-blk", "read_iops")]
    assert "significant" in failed[0].message
    assert not result.gate_passed()


def test_a_big_but_noisy_drop_is_not_a_violation(results: Path) -> None:
    noisy = {("c", "j"): {"read_iops": [10_000, 6_000, 14_000, 9_000]}}
    lower = {("c", "j"): {"read_iops": [9_000, 5_000, 12_000, 8_500]}}
    base = scan_run(make_run(results, "base", noisy))
    cand = scan_run(make_run(results, "cand", lower))
    result = compare_runs(base, [cand], rules=[parse_rule("read_iops:-5%")])
    (check,) = result.checks
    assert check.status == "pass"
    assert "not significant" in check.message
    assert check.comparison.baseline.noisy


def test_single_samples_are_inconclusive(results: Path) -> None:
    base = scan_run(make_run(results, "base", {("c", "j"): {"read_iops": [10_000]}}))
    cand = scan_run(make_run(results, "cand", {("c", "j"): {"read_iops": [5_000]}}))
    result = compare_runs(base, [cand], rules=[parse_rule("read_iops:-5%")])
    (check,) = result.checks
    assert check.status == "inconclusive"
    assert check.comparison.verdict == "insufficient samples"
    assert result.gate_passed()
    assert not result.gate_passed(fail_inconclusive=True)


def test_matching_across_specs_and_single_case_runs(results: Path) -> None:
    a = {
        ("virtio-blk", "latency"): {"read_iops": [1, 2]},
        ("nvme", "latency"): {"read_iops": [1, 2]},
    }
    b = {
        ("virtio-blk", "latency"): {"read_iops": [1, 2]},
        ("scsi", "latency"): {"read_iops": [3, 4]},
    }
    result = compare_runs(
        scan_run(make_run(results, "a", a)), [scan_run(make_run(results, "b", b))]
    )
    assert {(c.case_id, c.job) for c in result.cells} == {("virtio-blk", "latency")}
    assert {(u.run, u.case_id) for u in result.unmatched} == {("a", "nvme"), ("b", "scsi")}
    one = compare_runs(
        scan_run(
            make_run(results, "ssd-2019", {("ssd-2019", "randread-qd1"): {"read_iops": [5, 6]}})
        ),
        [
            scan_run(
                make_run(results, "ssd-2024", {("ssd-2024", "randread-qd1"): {"read_iops": [7, 8]}})
            )
        ],
    )
    assert one.matched_by_job == ("ssd-2024",)
    assert [(c.baseline_case, c.case_id) for c in one.cells] == [("ssd-2019", "ssd-2024")]


def _invoke(results: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["compare", *args, "--results", str(results)], env={"COLUMNS": "220"}
    )


def test_cli_gate_exit_codes_and_junit(results: Path, tmp_path: Path) -> None:
    make_run(results, "base", _cells(10_000, 100_000, seed=1))
    make_run(results, "same", _cells(10_000, 100_000, seed=2))
    make_run(results, "slow", _cells(8_000, 100_000, seed=3))
    ok = _invoke(results, "base", "same", "--rule", "read_iops:-5%")
    assert ok.exit_code == 0, ok.output
    assert "gate: passed" in ok.output
    junit = tmp_path / "gate.xml"
    bad = _invoke(results, "base", "slow", "--rule", "read_iops:-5%", "--junit", str(junit))
    assert bad.exit_code == GATE_FAILED == 3, bad.output
    assert "FAILED" in bad.output
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 2  # one rule x two matched cells
    failures = [c for c in cases if c.find("failure") is not None]
    assert [c.get("classname") for c in failures] == ["slow.virtio-blk.latency"]
    assert root.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]
    with_baseline = _invoke(results, "same", "slow", "--baseline", "base", "-r", "read_iops:-5%")
    assert with_baseline.exit_code == 3


def test_cli_rules_file_and_errors(results: Path, tmp_path: Path) -> None:
    make_run(results, "base", _cells(10_000, 100_000, seed=1))
    make_run(results, "slow", _cells(10_000, 130_000, seed=3))
    rules = tmp_path / "rules.yaml"
    rules.write_text("read_lat_p99_ns: +10%\n")
    gated = _invoke(results, "base", "slow", "--rules", str(rules))
    assert gated.exit_code == 3
    bad_rule = _invoke(results, "base", "slow", "--rule", "nonsense")
    assert isinstance(bad_rule.exception, SpecError)
    missing = _invoke(results, "base", "nope")
    assert isinstance(missing.exception, ResultError)
    alone = _invoke(results, "base")
    assert alone.exit_code == 2  # usage error


def test_cli_inconclusive_can_fail_the_gate(results: Path) -> None:
    make_run(results, "base", {("c", "j"): {"read_iops": [10_000]}})
    make_run(results, "cand", {("c", "j"): {"read_iops": [5_000]}})
    lenient = _invoke(results, "base", "cand", "--rule", "read_iops:-5%")
    assert lenient.exit_code == 0
    assert "inconclusive" in lenient.output
    strict = _invoke(results, "base", "cand", "--rule", "read_iops:-5%", "--fail-inconclusive")
    assert strict.exit_code == 3


def test_junit_escapes_and_skips(results: Path) -> None:
    base = scan_run(make_run(results, "base", {("a<&>", "j"): {"read_iops": [1.0]}}))
    cand = scan_run(make_run(results, "cand", {("a<&>", "j"): {"read_iops": [0.5]}}))
    result = compare_runs(
        base, [cand], rules=[parse_rule("read_iops:-5%"), parse_rule("write_iops:-5%")]
    )
    text = compare_junit(result)
    root = ET.fromstring(text)
    cases = root.findall(".//testcase")
    assert cases[0].get("classname") == "cand.a<&>.j"  # escaped in the file, parsed back
    assert cases[0].find("skipped") is not None  # n=1: inconclusive
    assert "write_iops" in (cases[1].find("skipped").get("message") or "")  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Two real imports whose jobs are named differently: cells pair on their fio parameters


DATA = Path(__file__).resolve().parents[1] / "data" / "fio"


@pytest.fixture(scope="module")
def two_imports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    from vmlab.results.importer import import_tree

    root = tmp_path_factory.mktemp("imports") / "results"
    raid = import_tree(DATA / "fio-3.1-raid-ssd", root).runs[0].run_id
    ssd = import_tree(DATA / "fio-2.18-ssd", root).runs[0].run_id
    return root, raid, ssd


def test_imports_pair_on_rw_bs_iodepth_numjobs(two_imports: tuple[Path, str, str]) -> None:
    """fio-3.1-raid-ssd names its jobs randread-qd1-nj1, fio-2.18-ssd randread-qd1 (its case
    ids are the folder names): the 7 queue depths with numjobs=1 they share pair per rw, and
    every other cell is named as having no partner."""
    root, raid, ssd = two_imports
    result = compare_runs(scan_run(root / raid), [scan_run(root / ssd)], metrics=["read_iops"])
    pairs = {(c.baseline_job, c.job) for c in result.cells}
    assert ("randread-qd1-nj1", "randread-qd1") in pairs
    assert ("randread-qd64-nj1", "randread-qd64") in pairs
    assert len(pairs) == 7  # read_iops: the randread cells only
    assert result.matched_by_params == (ssd,)
    assert not result.matched_by_job
    alone = {(u.run, u.job) for u in result.unmatched}
    assert (ssd, "randread-qd128") in alone and (ssd, "randwrite-qd128") in alone
    assert (raid, "randread-qd1-nj2") in alone
    assert len(alone) == 98 - 14 + 2
    every = compare_runs(scan_run(root / raid), [scan_run(root / ssd)])
    assert {c.job for c in every.cells if c.metric == "write_iops"} == {
        f"randwrite-qd{q}" for q in (1, 2, 4, 8, 16, 32, 64)
    }


def test_cli_compare_of_two_imports_exits_0_and_names_the_unpaired(
    two_imports: tuple[Path, str, str],
) -> None:
    root, raid, ssd = two_imports
    shown = _invoke(root, raid, ssd)
    assert shown.exit_code == 0, shown.output
    assert "randread-qd1 = randread-qd1-nj1" in shown.output
    assert "fio parameters" in shown.output
    assert f"{ssd} only: fio-2.18-ssd/randread-qd128" in shown.output
    gated = _invoke(root, raid, ssd, "--rule", "read_iops:-5%")
    assert gated.exit_code in (0, GATE_FAILED), gated.output  # n=1: inconclusive, not an error


def test_workload_keys_spell_one_value_one_way(results: Path) -> None:
    from vmlab.report.compare import workload_key

    assert workload_key({"rw": "randread", "bs": "4k", "iodepth": "01"}) == workload_key(
        {"rw": "RandRead", "bs": "4096", "iodepth": "1", "numjobs": "1"}
    )
    assert workload_key({"rw": "readwrite", "bs": "1M"}) == ("rw", "1048576", "1", "1")
    assert workload_key({"bs": "4k"}) is None  # no rw: nothing to say what ran
    # two jobs of one run with the same parameters: ambiguous, so neither is paired
    base = {("a", "x1"): {"read_iops": [1.0, 2.0]}, ("a", "x2"): {"read_iops": [1.0, 2.0]}}
    cand = {("b", "y"): {"read_iops": [1.0, 2.0]}}
    result = compare_runs(
        scan_run(make_run(results, "twins", base)), [scan_run(make_run(results, "one", cand))]
    )
    assert not result.cells
