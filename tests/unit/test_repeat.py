"""Repetitions that stop when sure: the spec's repeat rule, the stopping decision on synthetic
samples, the ratio interval it compares with, the loop that asks it, and where the stop shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs_fixture import make_run, normal
from typer.testing import CliRunner

from vmlab.bench.outcome import BenchOutcome
from vmlab.bench.repeat import decide
from vmlab.bench.run import stored
from vmlab.bench.workloads import JobContext, Repetitions
from vmlab.cli.results import app as results_app
from vmlab.cli.spec import until_ci_repeat
from vmlab.errors import SpecError
from vmlab.plan import Case
from vmlab.report.model import build_report
from vmlab.report.render import render_markdown
from vmlab.report.stats import describe, welch_p, welch_ratio_ci
from vmlab.results.rundir import RunDir, scan_run
from vmlab.spec import BenchSpec, Repeat, Variant, parse_spec

SPEC = {
    "name": "r",
    "guest": {"disks": [{"name": "data", "model": "virtio-blk"}]},
    "jobs": [{"name": "j", "rw": "randread"}],
}

CI = Repeat(min=3, max=20, ci_pct=2)
SIGNIFICANT = Repeat(min=3, max=20, ci_pct=2, until="significant")

# -- the spec ---------------------------------------------------------------------------------


def test_an_int_is_a_fixed_count_and_a_mapping_a_rule() -> None:
    assert parse_spec(SPEC).repeat == Repeat(min=1, max=1)
    fixed = parse_spec({**SPEC, "repeat": 3}).repeat
    assert (fixed.min, fixed.max, fixed.fixed) == (3, 3, True)
    rule = parse_spec({**SPEC, "repeat": {"min": 3, "max": 20, "ci_pct": 2}}).repeat
    assert rule == CI and not rule.fixed and rule.until == "ci"
    spec = parse_spec({**SPEC, "repeat": {"ci_pct": 5, "until": "significant"}})
    # what a run stores in spec.json reads back the same (resume, reports)
    again = BenchSpec.model_validate(json.loads(json.dumps(spec.model_dump(mode="json"))))
    assert again.repeat == Repeat(min=3, max=20, ci_pct=5, until="significant")


@pytest.mark.parametrize(
    ("repeat", "expected"),
    [
        ({"min": 5, "max": 3, "ci_pct": 2}, "repeat: min (5) is above max (3)"),
        ({"min": 3, "max": 20}, "repeat: repeating from min to max needs a"),
        ({"min": 1, "max": 5, "ci_pct": 2}, "repeat: ci_pct needs min >= 2"),
        ({"min": 3, "max": 20, "ci_pct": 0}, "repeat.ci_pct: Input should be greater than 0"),
        ({"min": 3, "max": 20, "ci_pct": 2, "until": "sure"}, "repeat.until: Input should be"),
        ({"min": 3, "max": 20, "ci": 2}, "repeat.ci: unknown key"),
        (0, "repeat.min: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_repeat_names_the_field(repeat: object, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({**SPEC, "repeat": repeat})
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_until_ci_turns_a_fixed_count_into_a_rule_and_keeps_an_explicit_range() -> None:
    assert until_ci_repeat(Repeat(min=1, max=1), 2) == Repeat(min=3, max=20, ci_pct=2)
    assert until_ci_repeat(Repeat(min=5, max=5), 1) == Repeat(min=5, max=20, ci_pct=1)
    assert until_ci_repeat(SIGNIFICANT, 4) == SIGNIFICANT.model_copy(update={"ci_pct": 4})


def test_until_ci_applies_to_a_spec_file_and_the_default_lab(tmp_path: Path) -> None:
    from vmlab.cli.spec import load

    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({**SPEC, "repeat": {"min": 4, "max": 8, "ci_pct": 5}}))
    assert load(path, None).repeat == Repeat(min=4, max=8, ci_pct=5)
    assert load(path, 2, 1.5).repeat == Repeat(min=4, max=8, ci_pct=1.5)
    assert load(None, None, 2).repeat == CI


# -- the decision -----------------------------------------------------------------------------


def test_a_fixed_count_stops_exactly_there() -> None:
    rule = Repeat(min=3, max=3)
    assert decide(rule, [1.0, 2.0]) is None
    stop = decide(rule, [1.0, 2.0, 50.0])
    assert stop is not None and (stop.repetitions, stop.reason) == (3, "fixed")


def test_ci_rule_stops_when_the_interval_is_within_the_margin() -> None:
    tight = [1000.0, 1001.0, 999.0]  # t(0.975, 2) = 4.30: half-width 2.5 = 0.25 %
    assert decide(CI, tight[:2]) is None  # never before min, however tight
    stop = decide(CI, tight)
    assert stop is not None and stop.reason == "ci" and stop.repetitions == 3
    assert stop.ci_pct == pytest.approx(describe(tight).half_width / 1000 * 100)  # type: ignore[operator]
    assert "≤ ±2%" in stop.detail


def test_ci_rule_goes_on_while_the_interval_is_wider_and_stops_at_max() -> None:
    noisy = normal(1000, 80, 20, seed=1)  # CV 8 %: ±2 % needs ~65 repetitions
    for n in range(3, 20):
        assert decide(CI, noisy[:n]) is None, n
    stop = decide(CI, noisy)
    assert stop is not None and (stop.repetitions, stop.reason) == (20, "max")
    assert stop.ci_pct is not None and stop.ci_pct > 2
    assert "> ±2%" in stop.detail


def test_ci_rule_just_outside_the_margin_does_not_stop() -> None:
    # half-width = t * s / sqrt(3); s chosen so it is 2.1 % of the mean
    t = 4.302652729911275
    s = 0.021 * 1000 * np.sqrt(3) / t
    values = [1000 - s, 1000.0, 1000 + s]  # sample stdev of (-s, 0, s) is s
    assert decide(CI, values) is None
    assert decide(CI.model_copy(update={"ci_pct": 2.2}), values) is not None


def test_a_noisy_cell_stops_later_than_a_steady_one() -> None:
    def count(values: list[float]) -> int:
        for n in range(1, len(values) + 1):
            stop = decide(CI, values[:n])
            if stop is not None:
                return stop.repetitions
        raise AssertionError("never stopped")

    steady = normal(300, 1, 20, seed=2)
    noisy = normal(3000, 150, 20, seed=3)
    assert count(steady) == 3 < count(noisy)


def test_significant_stops_once_the_ratio_excludes_one() -> None:
    reference = normal(1000, 50, 5, seed=4)
    faster = normal(1500, 60, 5, seed=5)
    stop = decide(SIGNIFICANT, faster[:3], reference=reference, against="a")
    assert stop is not None and stop.reason == "differs" and stop.against == "a"
    assert stop.ratio_ci is not None and stop.ratio_ci[0] > 1
    assert "× a 1.4" in stop.detail and "excludes 1" in stop.detail


def test_significant_stops_when_the_ratio_is_known_within_the_margin() -> None:
    reference = [1000.0, 1001.0, 999.0, 1000.5, 999.5]
    same = [1000.2, 1000.8, 999.4]
    stop = decide(SIGNIFICANT, same, reference=reference, against="a")
    assert stop is not None and stop.reason == "within-margin"
    low, high = stop.ratio_ci or (0, 0)
    assert low < 1 < high and stop.ci_pct is not None and stop.ci_pct <= 2


def test_significant_goes_on_while_the_ratio_straddles_one_and_is_wide() -> None:
    reference = normal(1000, 100, 5, seed=6)
    similar = normal(1020, 100, 20, seed=7)
    for n in range(3, 20):
        assert decide(SIGNIFICANT, similar[:n], reference=reference, against="a") is None, n
    stop = decide(SIGNIFICANT, similar, reference=reference, against="a")
    assert stop is not None and stop.reason == "max" and "includes 1" in stop.detail


def test_the_reference_itself_uses_the_ci_rule() -> None:
    stop = decide(SIGNIFICANT, [1000.0, 1001.0, 999.0], reference=None)
    assert stop is not None and stop.reason == "ci"
    # and so does a case whose reference has too few values to compare with
    stop = decide(SIGNIFICANT, [1000.0, 1001.0, 999.0], reference=[1000.0])
    assert stop is not None and stop.reason == "ci"


# -- the ratio interval -----------------------------------------------------------------------


def test_welch_ratio_ci_agrees_with_welch_and_covers_the_true_ratio() -> None:
    rng = np.random.default_rng(8)
    covered, agree, trials = 0, 0, 400
    for _ in range(trials):
        a = describe(rng.normal(1000, 50, 4).tolist())
        b = describe(rng.normal(1100, 80, 5).tolist())
        low, high = welch_ratio_ci(a, b) or (0.0, 0.0)
        covered += low <= 1.1 <= high
        agree += (low > 1 or high < 1) == ((welch_p(a, b) or 1) < 0.05)
    assert covered / trials > 0.9  # a 95 % interval, small samples
    assert agree / trials > 0.95


def test_welch_ratio_ci_edges() -> None:
    one, two = describe([5.0]), describe([4.0, 6.0])
    assert welch_ratio_ci(one, two) is None and welch_ratio_ci(two, one) is None
    assert welch_ratio_ci(describe([-1.0, 1.0]), two) is None  # mean 0: no ratio
    assert welch_ratio_ci(describe([2.0, 2.0]), describe([3.0, 3.0])) == (1.5, 1.5)
    assert welch_ratio_ci(describe([1e-300, 2e-300]), describe([1e300, 1.1e300])) is None


# -- the loop ---------------------------------------------------------------------------------


def _context(tmp_path: Path, case_id: str, repetitions: Repetitions) -> JobContext:
    run = RunDir.create(tmp_path, "r")
    case = Case(id=case_id, params={}, variant=Variant(params={}))
    outcome = BenchOutcome(run=run, cases=[case])
    from vmlab.bench.events import QuietEvents

    return JobContext(case, run.case(case_id), repetitions, QuietEvents(), outcome)


def test_the_loop_runs_until_the_rule_stops_and_stores_why(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "a", Repetitions(CI, warmup=True))
    values = iter([5000.0, 1000.0, 1040.0, 1000.0, 1000.0, 1000.0, 1000.0])
    ran = []
    for repetition in ctx.repeats("j"):
        ran.append(repetition)
        ctx.finished("j", repetition, {"total_iops": next(values)})
    # r0 is the warm-up (never counted); r1..r5 are within ±2.2 %, r1..r6 within ±1.7 %
    assert ran == [0, 1, 2, 3, 4, 5, 6]
    stored_stop = json.loads((ctx.case_dir.path / "jobs" / "j" / "repeat.json").read_text())
    assert (stored_stop["repetitions"], stored_stop["reason"]) == (6, "ci")


def test_a_resumed_run_compares_with_the_reference_it_stored(tmp_path: Path) -> None:
    run = make_run(tmp_path, "prev", {("a", "j"): {"total_iops": [1000.0, 1001.0, 999.0]}})
    ctx = _context(tmp_path / "new", "b", Repetitions(SIGNIFICANT, reference="a"))
    a = Case(id="a", params={}, variant=Variant(params={}))
    ctx.outcome.results.extend(stored(a, RunDir.open(run).case("a")))  # as --resume does
    ran = []
    for repetition in ctx.repeats("j"):
        ran.append(repetition)
        ctx.finished("j", repetition, {"total_iops": 1500.0 + repetition})
    assert ran == [1, 2, 3]  # differs from a at min
    stop = json.loads((ctx.case_dir.path / "jobs" / "j" / "repeat.json").read_text())
    assert stop["reason"] == "differs" and stop["against"] == "a"


# -- where it shows ---------------------------------------------------------------------------


def test_report_and_results_show_say_how_many_and_why(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        "run-a",
        {
            ("steady", "j"): {"total_iops": [300.0, 300.2, 299.9], "read_iops": [300.0] * 3},
            ("noisy", "j"): {
                "total_iops": normal(3000, 150, 20, seed=3),
                "read_iops": normal(3000, 150, 20, seed=3),  # a row per direction
            },
        },
    )
    for case, n, reason, detail in (
        ("steady", 3, "ci", "mean ±0.13% ≤ ±2%"),
        ("noisy", 20, "max", "max reached: mean ±2.40% > ±2%"),
    ):
        RunDir.open(run).case(case).write_repeat(
            "j", {"repetitions": n, "reason": reason, "detail": detail}
        )
    record = scan_run(run)
    assert record.stops[("steady", "j")].reason == "ci"
    text = render_markdown(build_report([record]))
    assert "| stopped |" in text
    assert "ci: mean ±0.13% ≤ ±2%" in text and "max: max reached: mean ±2.40% &gt; ±2%" in text
    shown = CliRunner().invoke(
        results_app, ["show", "run-a", "--results", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    assert "stopped" in shown.output and "max reached" in shown.output
    steady = next(line for line in shown.output.splitlines() if "steady" in line and "ci:" in line)
    assert "│ 3 " in steady


# -- a whole bench, the guests stood in for (tests/unit/test_bench_accel.py's way) -------------


@pytest.fixture
def lab_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("runtime", "scratch", "state", "cache"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"VMLAB_{name.upper()}", str(tmp_path / name))
    return tmp_path


def stand_in(
    monkeypatch: pytest.MonkeyPatch, iops: dict[str, list[float]], interrupt_at: tuple[str, int]
) -> list[tuple[str, str, int]]:
    """Each case "boots" and runs its jobs as run_guest_jobs does, taking its IOPS from
    ``iops`` in turn; Ctrl-C arrives once, at (case, repetition) of the first job."""
    from vmlab.bench import Bench

    ran: list[tuple[str, str, int]] = []
    left = {case: iter(values) for case, values in iops.items()}
    pending = [interrupt_at]

    def measure(self, env, case, case_dir, accel, jobs, timings):  # type: ignore[no-untyped-def]
        for job in case.jobs:
            for repetition in jobs.repeats(job.name):
                if pending and pending[0] == (case.id, repetition):
                    pending.clear()
                    raise KeyboardInterrupt
                ran.append((case.id, job.name, repetition))
                metrics = {"total_iops": next(left[case.id]), "read_iops": 1.0}
                case_dir.job(job.name, repetition).write_json("summary.json", {"metrics": metrics})
                jobs.finished(job.name, repetition, metrics)

    monkeypatch.setattr(Bench, "_measure", measure)
    return ran


def test_an_interrupted_case_resumes_counting_what_it_had_finished(
    lab_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_bench_accel import Recorder, facts, image

    from vmlab.bench import Bench, BenchOptions
    from vmlab.spec import default_lab

    spec = default_lab()
    jobs = [spec.jobs[0]]  # one job per case keeps the bookkeeping readable
    spec = spec.model_copy(update={"repeat": CI, "jobs": jobs})
    steady = [1000.0, 1001.0, 999.0]
    noisy = [1000.0, 1040.0] + [1000.0] * 8  # within ±2 % from r6 on
    ran = stand_in(
        monkeypatch,
        {"virtio-blk": steady, "virtio-scsi": noisy, "nvme": steady},
        interrupt_at=("virtio-scsi", 3),
    )
    options = BenchOptions(results_root=lab_dirs / "results", lab_key_path=lab_dirs / "key")

    def bench() -> Bench:
        return Bench(
            spec, facts=facts("tcg"), image=image(lab_dirs), options=options, events=Recorder()
        )

    with pytest.raises(KeyboardInterrupt):
        bench().run()
    (run_path,) = [p for p in (lab_dirs / "results").iterdir() if p.is_dir()]
    run = RunDir.open(run_path)
    assert run.case("virtio-scsi").status()["status"] == "interrupted"
    outcome = bench().run(resume=run)
    assert outcome.ok
    job = jobs[0].name
    # virtio-scsi: r1, r2 before the interrupt; after it, r3... until the interval is narrow
    scsi = [rep for case, _, rep in ran if case == "virtio-scsi"]
    assert scsi == [1, 2, 3, 4, 5, 6]  # not r1 again: r1, r2 were carried over
    assert [rep for case, _, rep in ran if case == "virtio-blk"] == [1, 2, 3]  # once: skipped
    status = run.case("virtio-scsi").status()
    assert status["carried"] == {"from": "virtio-scsi.1", "repetitions": {job: 2}}
    record = scan_run(run.path)
    stop = record.stops[("virtio-scsi", job)]
    assert (stop.repetitions, stop.reason) == (6, "ci")
    assert record.cells()[("virtio-scsi", job)]["total_iops"] == noisy[:6]
    assert record.stops[("virtio-blk", job)].repetitions == 3
    assert record.stops[("nvme", job)].repetitions == 3
    # the attempt is kept whole beside the cases
    assert (
        run.path / "attempts" / "virtio-scsi.1" / "jobs" / job / "r2" / "summary.json"
    ).is_file()
