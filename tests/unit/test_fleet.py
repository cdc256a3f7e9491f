"""vmlab.fleet: merging host runs, runner events, options; run_fleet through the real
ansible-runner with a local-connection playbook (no SSH, no QEMU); the CI example's files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from runs_fixture import make_run

from vmlab.errors import SpecError, VmlabError
from vmlab.fleet.events import EventCollector, HostUpdate, describe_failure
from vmlab.fleet.merge import HostOutcome, host_labels, merge_fleet
from vmlab.fleet.run import (
    FleetOptions,
    bench_args,
    parse_extra_vars,
    run_fleet,
)
from vmlab.report.compare import compare_runs, load_rules
from vmlab.resources import playbooks_dir
from vmlab.results.index import list_runs
from vmlab.results.rundir import RunDir, scan_run
from vmlab.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
CELLS = {("default", "randread"): {"read_iops": [1000.0, 1100.0], "read_lat_mean_ns": [9e5, 8e5]}}
SPEC = """\
name: fleet-unit
runtime_s: 1
guest:
  disks:
    - {name: data, model: virtio-blk, backend: {type: file, format: raw, size: 64M}}
jobs:
  - {name: randread, disk: data, rw: randread}
"""


def host_run(fetch: Path, host: str, *, status: str = "complete", log: str = "ok\n") -> Path:
    run = make_run(fetch / host, "20260101-000000-fleet-unit", CELLS, status=status, host=host)
    (fetch / host / "bench.log").write_text(log)
    (fetch / host / "index.sqlite").write_bytes(b"remote index: dropped")
    return run


def fallback() -> dict[str, Any]:
    return {"fallback_spec": {"name": "controller"}, "fallback_spec_yaml": "name: controller\n"}


# --------------------------------------------------------------------------------------------
# merge


def test_host_labels_are_safe_unique_and_stable() -> None:
    labels = host_labels(["HV-01.lab", "hv_01.lab", "hv-01.lab", "10.0.0.7", "--"])
    assert labels == {
        "HV-01.lab": "hv-01.lab",
        "hv_01.lab": "hv-01.lab-2",
        "hv-01.lab": "hv-01.lab-3",
        "10.0.0.7": "10.0.0.7",
        "--": "host",
    }
    assert all("_" not in label for label in labels.values())  # `<label>_<case>` splits once


def test_merge_gives_one_run_with_a_host_dimension(tmp_path: Path) -> None:
    fetch = tmp_path / "fetch"
    host_run(fetch, "hv-a", log="hv-a says hi\n")
    host_run(fetch, "hv_b")
    run = RunDir.create(tmp_path / "results", "fleet-unit")
    result = merge_fleet(
        run,
        fetch,
        [HostOutcome("hv-a", "ok"), HostOutcome("hv_b", "ok")],
        meta={"inventory": "inv.yml"},
        **fallback(),
    )
    assert not result.failed
    assert result.cases == ("hv-a_default", "hv-b_default")
    record = scan_run(run.path)
    assert [c.case_id for c in record.cases] == ["hv-a_default", "hv-b_default"]
    assert [dict(c.params) for c in record.cases] == [
        {"host": "hv-a", "disks.0.model": "default"},
        {"host": "hv_b", "disks.0.model": "default"},
    ]
    assert record.cells()[("hv-b_default", "randread")]["read_iops"] == [1000.0, 1100.0]
    case = json.loads((run.path / "cases" / "hv-a_default" / "case.json").read_text())
    assert case["host_case_id"] == "default" and case["host"] == "hv-a"
    # facts per host, the rest of each host's run beside them; the remote index is dropped
    assert json.loads((run.path / "hosts" / "hv-a.json").read_text()) == {"hostname": "hv-a"}
    assert (run.path / "hosts" / "hv-a" / "bench.log").read_text() == "hv-a says hi\n"
    assert (run.path / "hosts" / "hv-b" / "status.json").is_file()
    assert not list(run.path.glob("hosts/*/index.sqlite"))
    assert [p.name for p in (fetch / "hv-a").iterdir()] == ["index.sqlite"]  # all else moved
    # spec from the first host, status and fleet.json
    assert json.loads(run.file("spec.json").read_text())["name"] == "20260101-000000-fleet-unit"
    status = run.status()
    assert status["status"] == "complete" and status["cases"] == list(result.cases)
    fleet = json.loads(run.file("fleet.json").read_text())
    assert fleet["inventory"] == "inv.yml" and fleet["spec_from"] == "hv-a"
    assert [(h["host"], h["label"], h["status"]) for h in fleet["hosts"]] == [
        ("hv-a", "hv-a", "ok"),
        ("hv_b", "hv-b", "ok"),
    ]


def test_a_failed_host_is_kept_with_its_error_and_spares_the_others(tmp_path: Path) -> None:
    fetch = tmp_path / "fetch"
    (fetch / "hv-a").mkdir(parents=True)  # unreachable: nothing came back
    host_run(fetch, "hv-b")
    host_run(fetch, "hv-c", status="failed")  # vmlab bench exited 1: partial results came back
    (fetch / "hv-d").mkdir()  # ansible says ok, but no run directory arrived
    (fetch / "hv-d" / "bench.log").write_text("where did it go\n")
    run = RunDir.create(tmp_path / "results", "fleet-unit")
    result = merge_fleet(
        run,
        fetch,
        [
            HostOutcome("hv-a", "unreachable", "unreachable during 'Copy the spec': no route"),
            HostOutcome("hv-b", "ok"),
            HostOutcome("hv-c", "failed", "Run vmlab bench: non-zero return code (exit 1)"),
            HostOutcome("hv-d", "ok"),
        ],
        **fallback(),
    )
    by_host = {h.host: h for h in result.hosts}
    assert [h.host for h in result.failed] == ["hv-a", "hv-c", "hv-d"]
    assert by_host["hv-a"].status == "unreachable" and by_host["hv-a"].cases == ()
    assert by_host["hv-c"].cases == ("hv-c_default",) and by_host["hv-c"].bench_status == "failed"
    assert by_host["hv-d"].status == "failed"
    assert "no run directory came back from hv-d" in (by_host["hv-d"].error or "")
    assert (run.path / "hosts" / "hv-d" / "bench.log").read_text() == "where did it go\n"
    assert [c.case_id for c in scan_run(run.path).cases] == ["hv-b_default", "hv-c_default"]
    status = run.status()
    assert status["status"] == "failed"
    assert set(status["failed_hosts"]) == {"hv-a", "hv-c", "hv-d"}
    assert status["failed_hosts"]["hv-a"].startswith("unreachable during")


def test_when_no_host_sent_a_run_the_controllers_spec_is_written(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "results", "fleet-unit")
    result = merge_fleet(
        run, tmp_path / "fetch", [HostOutcome("hv-a", "unreachable", "down")], **fallback()
    )
    assert result.cases == ()
    assert json.loads(run.file("spec.json").read_text()) == {"name": "controller"}
    assert run.file("spec.yaml").read_text() == "name: controller\n"
    assert scan_run(run.path).cases == ()


def test_an_interrupted_fleet_keeps_what_came_back(tmp_path: Path) -> None:
    fetch = tmp_path / "fetch"
    host_run(fetch, "hv-a")
    run = RunDir.create(tmp_path / "results", "fleet-unit")
    result = merge_fleet(
        run,
        fetch,
        [HostOutcome("hv-a", "ok"), HostOutcome("hv-b", "interrupted", "interrupted")],
        interrupted=True,
        **fallback(),
    )
    assert [(h.host, h.status) for h in result.hosts] == [("hv-a", "ok"), ("hv-b", "interrupted")]
    assert run.status()["status"] == "interrupted"
    assert [c.case_id for c in scan_run(run.path).cases] == ["hv-a_default"]


def test_two_fleet_runs_compare_host_by_host(tmp_path: Path) -> None:
    runs = []
    for n in (1, 2):
        fetch = tmp_path / f"fetch{n}"
        host_run(fetch, "hv-a")
        host_run(fetch, "hv-b")
        run = RunDir.create(tmp_path / "results", f"fleet-{n}")
        merge_fleet(
            run, fetch, [HostOutcome("hv-a", "ok"), HostOutcome("hv-b", "ok")], **fallback()
        )
        runs.append(scan_run(run.path))
    result = compare_runs(runs[0], runs[1:], metrics=["read_iops"])
    assert [(c.case_id, c.job) for c in result.cells] == [
        ("hv-a_default", "randread"),
        ("hv-b_default", "randread"),
    ]
    assert not result.unmatched


# --------------------------------------------------------------------------------------------
# runner events


class Recorder:
    def __init__(self) -> None:
        self.updates: list[HostUpdate] = []

    def host_update(self, update: HostUpdate) -> None:
        self.updates.append(update)


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": data}


def test_events_become_progress_and_one_outcome_per_host() -> None:
    recorder = Recorder()
    collect = EventCollector(recorder)
    for e in [
        event("playbook_on_start"),
        event("runner_on_start", host="hv-b", task="Copy the spec"),
        event("runner_on_start", host="hv-a", task="Copy the spec"),
        event("runner_on_ok", host="hv-a", task="Copy the spec", res={"changed": True}),
        event("runner_on_ok", host="hv-b", task="Copy the spec", res={"changed": False}),
        event("runner_on_start", host="hv-a", task="Run vmlab bench"),
        event(
            "runner_on_failed",
            host="hv-a",
            task="Run vmlab bench",
            res={
                "msg": "non-zero return code",
                "rc": 1,
                "stderr": "error: 1 of 1 cases failed: default\nhint: see status.json",
            },
        ),
        event(  # a later failure of the same host does not replace the first
            "runner_on_failed", host="hv-a", task="Fetch the run directory", res={"msg": "x"}
        ),
        event(
            "runner_on_failed", host="hv-c", task="Probe", res={"msg": "meh"}, ignore_errors=True
        ),
        event(
            "runner_on_unreachable",
            host="hv-b",
            task="Run vmlab bench",
            res={"msg": "Failed to connect to the host via ssh: Connection refused"},
        ),
        event(
            "playbook_on_stats",
            processed={"hv-a": 1, "hv-b": 1, "hv-c": 1, "hv-d": 1},
            dark={"hv-b": 1},
            failures={"hv-a": 2, "hv-d": 1},
        ),
    ]:
        assert collect(e) is True  # every event is kept in the artifacts
    outcomes = {o.host: o for o in collect.outcomes()}
    assert list(outcomes) == ["hv-b", "hv-a", "hv-c", "hv-d"]
    assert outcomes["hv-a"].status == "failed"
    assert outcomes["hv-a"].failed_task == "Run vmlab bench"
    assert outcomes["hv-a"].error == (
        "Run vmlab bench: non-zero return code (exit 1)\n"
        "error: 1 of 1 cases failed: default\nhint: see status.json"
    )
    assert outcomes["hv-b"].status == "unreachable"
    assert "Connection refused" in (outcomes["hv-b"].error or "")
    assert outcomes["hv-c"].status == "ok"  # ignore_errors
    assert outcomes["hv-d"].status == "failed"  # only the stats knew
    states = [(u.host, u.task, u.state) for u in recorder.updates]
    assert states[:4] == [
        ("hv-b", "Copy the spec", "running"),
        ("hv-a", "Copy the spec", "running"),
        ("hv-a", "Copy the spec", "changed"),
        ("hv-b", "Copy the spec", "ok"),
    ]
    assert ("hv-b", "Run vmlab bench", "unreachable") in states


def test_a_broken_event_does_not_stop_the_run() -> None:
    class Broken:
        def host_update(self, update: HostUpdate) -> None:
            raise RuntimeError("display died")

    collect = EventCollector(Broken())
    assert collect(event("runner_on_start", host="hv-a", task="t")) is True
    assert collect({"event": "runner_on_ok", "event_data": "not a mapping"}) is True
    assert [o.status for o in collect.outcomes()] == ["ok"]


def test_describe_failure_keeps_the_tail_of_stderr() -> None:
    stderr = "\n".join(f"line {i}" for i in range(40))
    text = describe_failure("Run vmlab bench", {"msg": "", "rc": 2, "stderr": stderr})
    assert text.splitlines()[0] == "Run vmlab bench: failed (exit 2)"
    assert text.splitlines()[1:] == [f"line {i}" for i in range(28, 40)]
    timeout = "The task action failed to execute in the expected time frame (5) and was terminated"
    assert describe_failure("Run vmlab bench", {"msg": timeout}) == f"Run vmlab bench: {timeout}"


def test_extra_vars_and_bench_args() -> None:
    assert parse_extra_vars(["vmlab_bin=/opt/v/bin/vmlab", "n=3", "l=[a, b]", "e="]) == {
        "vmlab_bin": "/opt/v/bin/vmlab",
        "n": 3,
        "l": ["a", "b"],
        "e": "",
    }
    for bad in ("novalue", "=x", "not a name=1"):
        with pytest.raises(VmlabError, match="bad extra variable"):
            parse_extra_vars([bad])
    assert bench_args(runtime_s=5, timeout_scale=2.0, accel="tcg") == [
        "--yes",
        "--runtime",
        "5",
        "--timeout-scale",
        "2",
        "--accel",
        "tcg",
    ]
    # the hosts run unattended: a big matrix is confirmed (or refused) on the controller
    assert bench_args(runtime_s=None, timeout_scale=None, accel=None) == ["--yes"]


# --------------------------------------------------------------------------------------------
# run_fleet with the real ansible-runner, local connection, a playbook standing in for bench.yml

LOCAL_PLAYBOOK = """\
- name: Stand in for bench.yml (local connection)
  hosts: all
  gather_facts: false
  tasks:
    - name: Refuse hv-b
      ansible.builtin.command:
        argv:
          - {python}
          - -c
          - "import sys; sys.exit('error: boom on ' + sys.argv[1])"
          - "{{{{ inventory_hostname }}}}"
      when: inventory_hostname == 'hv-b'
      changed_when: true
    - name: Send a run directory back
      ansible.builtin.copy:
        src: "{fixture}/"
        dest: "{{{{ vmlab_fetch_dir }}}}/{{{{ inventory_hostname }}}}/"
        mode: preserve
    - name: Record what the playbook was given
      ansible.builtin.copy:
        content: >-
          {{{{ {{'args': vmlab_bench_extra_args, 'spec': vmlab_spec,
                'tag': vmlab_run_tag, 'mine': my_var}} | to_json }}}}
        dest: "{{{{ vmlab_fetch_dir }}}}/{{{{ inventory_hostname }}}}/given.json"
        mode: "0644"
"""


def test_run_fleet_drives_ansible_runner_and_merges(tmp_path: Path) -> None:
    pytest.importorskip("ansible_runner", reason="pip install 'vmlab[fleet]'")
    if shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ansible-playbook is not beside this Python: pip install 'vmlab[fleet]'")
    fixture = tmp_path / "fixture"
    make_run(fixture, "20260101-000000-fleet-unit", CELLS, host="somewhere")
    playbook = tmp_path / "stand-in.yml"
    playbook.write_text(LOCAL_PLAYBOOK.format(python=json.dumps(sys.executable), fixture=fixture))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"hv-a": {}, "hv-b": {}, "hv-c": {}},
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                    },
                }
            }
        )
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    seen: list[HostUpdate] = []

    class Seen:
        def host_update(self, update: HostUpdate) -> None:
            seen.append(update)

    outcome = run_fleet(
        FleetOptions(
            inventory=inventory,
            spec=spec,
            results_root=tmp_path / "results",
            limit="hv-a,hv-b",
            forks=2,
            bench_args=["--timeout-scale", "2"],
            extra_vars={"my_var": "here", "ansible_become_password": "hunter2"},
            playbook=playbook,
        ),
        Seen(),
    )
    assert [(h.host, h.status) for h in outcome.hosts] == [("hv-a", "ok"), ("hv-b", "failed")]
    (failed,) = outcome.failed
    assert failed.failed_task == "Refuse hv-b"
    assert "error: boom on hv-b" in (failed.error or "")
    assert {(u.host, u.task, u.state) for u in seen} >= {
        ("hv-a", "Send a run directory back", "running"),
        ("hv-b", "Refuse hv-b", "failed"),
    }
    run = outcome.run.path
    assert [c.case_id for c in scan_run(run).cases] == ["hv-a_default"]
    given = json.loads((run / "hosts" / "hv-a" / "given.json").read_text())
    assert given["args"] == ["--timeout-scale", "2"] and given["mine"] == "here"
    assert given["spec"] == str(spec.resolve()) and given["tag"].startswith(run.name)
    fleet = json.loads((run / "fleet.json").read_text())
    assert fleet["limit"] == "hv-a,hv-b" and fleet["ansible"]["status"] == "failed"
    # ansible-runner's artifacts are kept, its environment reduced to names
    artifacts = run / fleet["ansible"]["artifacts"]
    assert "Refuse hv-b" in (artifacts / "stdout").read_text()
    command = json.loads((artifacts / "command").read_text())
    assert isinstance(command["env"], list) and "PATH" in command["env"]
    assert "hunter2" not in (artifacts / "command").read_text()
    assert fleet["extra_vars"]["ansible_become_password"] == "<redacted>"
    assert fleet["extra_vars"]["my_var"] == "here"
    assert not (run / ".fetch").exists()
    (row,) = list_runs(tmp_path / "results" / "index.sqlite")
    assert row.id == run.name and row.cases == 1


def test_run_fleet_refuses_a_bad_spec_or_a_missing_inventory(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nguest: {disks: [{model: virtio-blck}]}\n")
    with pytest.raises(SpecError):
        run_fleet(FleetOptions(inventory=tmp_path / "inv.yml", spec=spec))
    spec.write_text(SPEC)
    with pytest.raises(VmlabError, match="no inventory"):
        run_fleet(FleetOptions(inventory=tmp_path / "inv.yml", spec=spec))
    assert not (tmp_path / "results").exists()


BIG_SPEC = SPEC.replace(
    "guest:\n",
    "guest:\n  cpus: [1, 2, 3, 4, 5, 6, 7, 8]\n"
    "  memory_mib: [256, 512, 768, 1024, 1280, 1536, 1792, 2048]\n"
    "  kernel_args: [a, b, c, d, e, f, g, h]\n",
)  # 512 cases


def test_fleet_run_confirms_a_big_matrix_before_ansible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmlab.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(BIG_SPEC)
    inventory = tmp_path / "inv.yml"  # missing: reached only once the spec is accepted

    def fleet(*args: str) -> int:
        with pytest.raises(SystemExit) as done:
            main(["fleet", "run", "-i", str(inventory), str(spec), *args])
        return int(done.value.code or 0)

    assert fleet() == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the matrix has 512 cases" in err and "--yes" in err
    assert fleet("--yes") == 1
    assert "no inventory" in capsys.readouterr().err
    with pytest.raises(SpecError, match="the matrix has 512 cases"):
        run_fleet(FleetOptions(inventory=inventory, spec=spec, max_cases=256))
    with pytest.raises(VmlabError, match="no inventory"):
        run_fleet(FleetOptions(inventory=inventory, spec=spec))


def test_no_matching_host_is_an_error_and_leaves_no_run(tmp_path: Path) -> None:
    pytest.importorskip("ansible_runner", reason="pip install 'vmlab[fleet]'")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    hv-a: {ansible_connection: local}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    with pytest.raises(VmlabError, match=r"no host of .* matches --limit nothere"):
        run_fleet(
            FleetOptions(
                inventory=inventory, spec=spec, results_root=tmp_path / "r", limit="nothere"
            )
        )
    assert list((tmp_path / "r").iterdir()) == []


# --------------------------------------------------------------------------------------------
# shipped playbooks and the CI example


def test_playbooks_pass_ansible_syntax_check() -> None:
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed: pip install 'vmlab[fleet]'")
    root = playbooks_dir()
    done = subprocess.run(
        [
            str(playbook_bin),
            "--syntax-check",
            "-i",
            str(root / "inventory.example.yml"),
            str(root / "host-prepare.yml"),
            str(root / "bench.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": str(Path(sys.executable).parent), "ANSIBLE_CONFIG": str(root / "ansible.cfg")},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_example_spec_rules_and_workflow_fit_vmlab() -> None:
    ci = REPO / "examples" / "ci"
    spec = load_spec(ci / "spec.yaml")
    assert spec.repeat.min >= 2  # the gate needs n >= 2 per side to decide anything
    assert {r.metric for r in load_rules(ci / "rules.yaml")} >= {"read_iops", "read_lat_p99_ns"}
    workflow = yaml.safe_load((ci / "vmlab-bench.yml").read_text())
    steps = workflow["jobs"]["bench"]["steps"]
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in scripts
    assert "scripts/setup" in scripts
    assert "vmlab host check --json" in scripts and '.accel == "kvm"' in scripts
    assert "kvm.json" in scripts and ".enabled == true" in scripts
    assert "vmlab bench" in scripts and "--ci" in scripts and "--junit junit-bench.xml" in scripts
    for option in ("--baseline", "--rules", "--junit"):  # options `vmlab compare` has
        assert option in scripts
    assert any(str(s.get("uses", "")).startswith("actions/upload-artifact@") for s in steps)


def test_fetched_archives_are_unpacked_and_bench_log_comes_from_the_events(
    tmp_path: Path,
) -> None:
    """bench.yml leaves unpacking and bench.log to `vmlab fleet run` (vmlab_fetch_unpack)."""
    import tarfile

    from vmlab.fleet.run import _unpack_fetched

    made = tmp_path / "made" / "20260101-000000-lab"
    made.mkdir(parents=True)
    (made / "spec.json").write_text("{}")
    fetch = tmp_path / "fetch"
    (fetch / "hv-a").mkdir(parents=True)
    with tarfile.open(fetch / "hv-a" / "results.tar.gz", "w:gz") as tar:
        tar.add(made.parent, arcname=".")
    collect = EventCollector(Recorder())
    collect(event("runner_on_ok", host="hv-a", task="Run vmlab bench", res={"stdout": "✓ ok"}))
    collect(
        event("runner_on_failed", host="hv-b", task="Run vmlab bench", res={"stderr": "error: x"})
    )
    _unpack_fetched(fetch, ["hv-a", "hv-b", "hv-c"], collect)
    assert (fetch / "hv-a" / "20260101-000000-lab" / "spec.json").read_text() == "{}"
    assert not (fetch / "hv-a" / "results.tar.gz").exists()
    assert (fetch / "hv-a" / "bench.log").read_text() == "✓ ok\n\n"
    assert (fetch / "hv-b" / "bench.log").read_text() == "\nerror: x\n"  # nothing came back
    assert not (fetch / "hv-c").exists()  # never ran the bench: nothing to write
