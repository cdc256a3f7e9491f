"""A nested run that is cut short keeps what L1 finished, and --resume finishes the rest: the
host-side bookkeeping (adoption, attempts, the inner results tar), with a synthesized inner run
in place of a booted L1 (tests/integration/test_nested.py boots one)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from test_bench_accel import facts, image

from vmlab.bench.outcome import BenchOptions
from vmlab.bench.run import new_run
from vmlab.nested import run as nested_run
from vmlab.nested.inner import bench_command
from vmlab.nested.plan import l1_plans
from vmlab.nested.run import INNER_TAR, NestedBench, _inner_run_id
from vmlab.plan import plan
from vmlab.results.rundir import RunDir
from vmlab.spec import parse_spec

TWO = """\
name: two
hypervisor: {kind: nested}
guest: {disks: [{model: [virtio-blk, nvme]}]}
jobs: [{name: j, rw: randread}]
"""


def bench(tmp_path: Path, *, resumed: bool = False, run: RunDir | None = None) -> NestedBench:
    spec = parse_spec(yaml.safe_load(TWO), source=TWO)
    cases = plan(spec)
    img = image(tmp_path)
    options = BenchOptions(results_root=tmp_path / "results")
    return NestedBench(
        "spec",
        cases,
        l1_plans(spec, cases),
        facts=facts("tcg"),
        image=img,
        options=options,
        events=nested_run.QuietEvents(),
        run=run or new_run(spec, facts("tcg"), img, options.results_root),
        resumed=resumed,
    )


def inner_run(back: Path, statuses: dict[str, str]) -> RunDir:
    """What an inner bench leaves in L1's results: one run, a case per status."""
    inner = RunDir.create(back / "results", "two")
    inner.write_json("spec.json", {"name": "two"})
    inner.write_json("host.json", {"kernel": "6.1.0-57-amd64", "vhost_net": True})
    inner.set_status("interrupted")
    for cid, status in statuses.items():
        case = inner.case(cid)
        case.path.mkdir(parents=True)
        case.write_json("case.json", {"id": cid, "params": {"guest.disks.0.model": cid}})
        case.set_status(status)
        if status == "ok":
            rep = case.path / "jobs" / "j" / "r1"
            rep.mkdir(parents=True)
            (rep / "summary.json").write_text(json.dumps({"metrics": {"read_iops": 5.0}}))
    return inner


def tar_of(back: Path) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(back / "results", arcname="results")
    return data.getvalue()


def test_an_interrupted_l1_keeps_the_finished_case_and_marks_the_other_interrupted(
    tmp_path: Path,
) -> None:
    nb = bench(tmp_path)
    (plan_,) = nb.plans
    back, logs = tmp_path / "back", tmp_path / "l1"
    logs.mkdir()
    inner_run(back, {"virtio-blk": "ok", "nvme": "interrupted", "host-baseline": "ok"})
    nb._adopt_what_came(plan_, "img", back, logs, interrupted=True)
    run = nb.run_dir
    # L1's own baseline is the run's limit, as a host baseline is (before: left in hosts/).
    assert run.case("host-baseline").status()["status"] == "ok"
    assert ("host-baseline", "j") in {(r.case_id, r.job) for r in nb.outcome.results}
    assert run.case("virtio-blk").status()["status"] == "ok"
    assert run.case("nvme").status()["status"] == "interrupted"
    assert nb.outcome.failed == {}  # interrupted is not failed: --resume finishes it
    meta = json.loads((run.path / "cases" / "virtio-blk" / "case.json").read_text())
    assert meta["params"]["host"] == plan_.label


def test_a_failed_l1_keeps_the_finished_case_and_fails_the_other(tmp_path: Path) -> None:
    nb = bench(tmp_path)
    (tmp_path / "l1").mkdir()
    inner_run(tmp_path / "back", {"virtio-blk": "ok", "nvme": "running"})
    nb._adopt_what_came(nb.plans[0], "img", tmp_path / "back", tmp_path / "l1", interrupted=False)
    assert nb.run_dir.case("virtio-blk").status()["status"] == "ok"
    assert list(nb.outcome.failed) == ["nvme"]


def test_an_interrupt_before_the_inner_bench_ran_keeps_only_the_logs(tmp_path: Path) -> None:
    nb = bench(tmp_path)
    nb._adopt_what_came(nb.plans[0], "img", tmp_path / "nothing", tmp_path, interrupted=True)
    assert nb.run_dir.case_ids_on_disk() == []


def test_a_resumed_l1_gets_the_latest_inner_tar_and_earlier_attempts_move_aside(
    tmp_path: Path,
) -> None:
    first = bench(tmp_path)
    (plan_,) = first.plans
    run = first.run_dir
    kept = run.path / "hosts" / plan_.label / "l1"
    kept.mkdir(parents=True)
    (kept / INNER_TAR).write_bytes(b"attempt one")
    (run.path / "hosts" / f"{plan_.label}.json").write_text("{}")
    again = bench(tmp_path, resumed=True, run=run)
    assert again._earlier(plan_) == b"attempt one"
    attempts = run.path / "attempts" / "hosts"
    assert (attempts / f"{plan_.label}.1" / "l1" / INNER_TAR).is_file()
    assert (attempts / f"{plan_.label}.1.json").is_file()
    assert not (run.path / "hosts" / plan_.label).exists()
    # An attempt that brought nothing back (L1 did not boot) leaves the one before it.
    (run.path / "hosts" / plan_.label / "l1").mkdir(parents=True)
    assert again._earlier(plan_) == b"attempt one"
    assert (attempts / f"{plan_.label}.2").is_dir()
    assert bench(tmp_path)._earlier(plan_) is None  # not resumed: a fresh inner run


def test_a_resumed_run_whose_l1_finished_every_case_boots_no_l1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = bench(tmp_path)
    back = tmp_path / "back"
    (tmp_path / "l1").mkdir()
    inner_run(back, {"virtio-blk": "ok", "nvme": "ok"})
    first._adopt(first.plans[0], "img", back, tmp_path / "l1")
    first.run_dir.replace_host_facts(
        first.facts.model_copy(update={"nested": first.hosts}).model_dump(mode="json")
    )
    again = bench(tmp_path, resumed=True, run=first.run_dir)
    monkeypatch.setattr(NestedBench, "_one", lambda self, plan: pytest.fail("booted an L1"))
    again.run_all()
    assert again.outcome.ok and len(again.outcome.results) == 2
    assert [h.kernel for h in again.hosts] == ["6.1.0-57-amd64"]  # L1's facts carried over


def test_the_inner_tar_names_its_run_and_the_inner_bench_resumes_it(tmp_path: Path) -> None:
    inner = inner_run(tmp_path / "back", {"nvme": "interrupted"})
    assert _inner_run_id(tar_of(tmp_path / "back")) == inner.path.name
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    assert _inner_run_id(empty.getvalue()) is None
    command = bench_command(timeout_scale=6, l2_key="abc", resume=inner.path.name)
    assert f"--resume /root/nested/work/results/{inner.path.name} --ci" in command
    assert "spec.yaml" not in command


def test_each_l1_of_a_kernel_axis_has_its_baseline_as_the_limit_of_its_own_cases(
    tmp_path: Path,
) -> None:
    from vmlab.metrics import limit_cases

    text = TWO.replace(
        "{kind: nested}", "{kind: nested, kernel: [linux-image-amd64, linux-image-cloud-amd64]}"
    )
    spec = parse_spec(yaml.safe_load(text), source=text)
    cases = plan(spec)
    nb = bench(tmp_path)
    nb.cases, nb.plans = {c.id: c for c in cases}, l1_plans(spec, cases)
    ids = [nb._baseline_id(p) for p in nb.plans]
    assert ids == ["linux-image-amd64_host-baseline", "linux-image-cloud-amd64_host-baseline"]
    limits = limit_cases([*nb.cases, *ids])
    assert limits["linux-image-cloud-amd64_nvme"] == "linux-image-cloud-amd64_host-baseline"
    assert limits["linux-image-amd64_nvme"] == "linux-image-amd64_host-baseline"


def test_a_stored_spec_comes_back_with_the_yaml_it_was_written_in(tmp_path: Path) -> None:
    """--resume of a nested run rebuilds L1's spec from the text (spec.json has no source)."""
    nb = bench(tmp_path)
    assert "source" not in json.loads(nb.run_dir.file("spec.json").read_text())
    again = nb.run_dir.spec()
    assert again.source == TWO and again.nested
    assert yaml.safe_load(nested_run.inner_spec(again))["guest"] == yaml.safe_load(TWO)["guest"]
