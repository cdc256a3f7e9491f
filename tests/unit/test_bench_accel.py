"""A run never mixes accelerators: how the bench falls back from a KVM that fails under a guest.

The guests are stood in for (booting one is the integration tier's job, tests/integration/
test_accel.py does it for real on a host whose KVM fails); what is tested here is the order of
the cases, what is rerun, what is kept and what is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmlab.bench import Bench, BenchOptions
from vmlab.errors import AccelError
from vmlab.guest.image import GuestImage
from vmlab.host import HostFacts
from vmlab.plan import Case
from vmlab.spec import default_lab


def facts(accel: str) -> HostFacts:
    return HostFacts(
        hostname="h",
        kernel="k",
        cpus=2,
        memory_mib=1,
        qemu="/usr/bin/qemu-system-x86_64",
        qemu_version="7.2",
        qemu_img="qemu-img",
        qemu_storage_daemon="qemu-storage-daemon",
        fio_version="3.33",
        accel=accel,  # type: ignore[arg-type]
        accel_reason="the probe guest booted",
        kvm_device=True,
        vhost_net=False,
        iommu_groups=0,
        hugepages_2m_total=0,
        hugepages_2m_free=0,
        missing=[],
    )


def image(tmp_path: Path) -> GuestImage:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    return GuestImage(
        root=tmp_path,
        key="k",
        kernel=kernel,
        initrd=tmp_path / "initrd",
        slim_initrd=tmp_path / "initrd-slim",
        cmdline="",
        ready_marker="R",
        failed_marker="F",
        host_key="ssh-ed25519 AAAA",
        user="root",
        kernel_version="6.1",
        fio_version="fio-3.33",
        min_memory_mib=256,
    )


class Recorder:
    def __init__(self) -> None:
        self.notices: list[str] = []
        self.finished: list[tuple[str, str]] = []

    def case_started(self, case: Case, index: int, total: int) -> None: ...
    def stage(self, case: Case, what: str) -> None: ...
    def job_finished(self, *args: object) -> None: ...
    def job_stopped(self, *args: object) -> None: ...
    def case_finished(self, case: Case, status: str, error: str | None) -> None:
        self.finished.append((case.id, status))

    def notice(self, text: str) -> None:
        self.notices.append(text)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("runtime", "scratch", "state", "cache"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"VMLAB_{name.upper()}", str(tmp_path / name))
    return tmp_path


def stand_in_guests(
    monkeypatch: pytest.MonkeyPatch, kvm_dies_at: str | None
) -> list[tuple[str, str]]:
    """Every case "boots" and measures; under KVM the guest of ``kvm_dies_at`` dies."""
    booted: list[tuple[str, str]] = []

    def measure(self, env, case, case_dir, accel, jobs, timings):  # type: ignore[no-untyped-def]
        booted.append((case.id, accel))
        case_dir.write_text("argv.sh", f"qemu -machine q35,accel={accel}\n")
        if accel == "kvm" and case.id == kvm_dies_at:
            detail = "KVM internal error. Suberror: 1 ... emulation failure"
            raise AccelError(f"KVM failed: {detail}", accel="kvm", detail=detail)
        for job in case.jobs:
            metrics = {"read_iops": 1.0 if accel == "kvm" else 2.0}
            case_dir.job(job.name, 1).write_json("summary.json", {"metrics": metrics})
            jobs.finished(job.name, 1, metrics)

    monkeypatch.setattr(Bench, "_measure", measure)
    return booted


def bench(env: Path, accel: str, options_accel: str | None = None) -> tuple[Bench, Recorder]:
    events = Recorder()
    options = BenchOptions(
        results_root=env / "results", accel=options_accel, lab_key_path=env / "key"
    )
    spec = default_lab()
    return Bench(spec, facts=facts(accel), image=image(env), options=options, events=events), events


def test_kvm_failing_at_the_second_case_reruns_the_first_under_tcg_too(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted = stand_in_guests(monkeypatch, kvm_dies_at="virtio-scsi")
    runner, events = bench(env, "kvm")
    outcome = runner.run()
    assert booted == [
        ("virtio-blk", "kvm"),
        ("virtio-scsi", "kvm"),  # dies: the run switches
        ("virtio-blk", "tcg"),
        ("virtio-scsi", "tcg"),
        ("nvme", "tcg"),
    ]
    assert outcome.ok
    assert {r.metrics["read_iops"] for r in outcome.results} == {2.0}  # TCG results only
    assert len(outcome.results) == 3 * 2
    run = outcome.run.path
    host = json.loads((run / "host.json").read_text())
    assert host["accel"] == "tcg" and host["accel_switch"]["case"] == "virtio-scsi"
    assert "emulation failure" in host["accel_reason"]
    assert sorted(p.name for p in (run / "attempts").iterdir()) == ["virtio-blk.1", "virtio-scsi.1"]
    kept = json.loads(
        (run / "attempts" / "virtio-blk.1" / "jobs/latency/r1/summary.json").read_text()
    )
    assert kept["metrics"]["read_iops"] == 1.0  # the KVM measurement, kept, not counted
    (notice,) = events.notices
    assert "virtio-scsi" in notice and "TCG" in notice
    # The verdict cache says TCG now, with the reason.
    (cached,) = json.loads((env / "cache" / "accel.json").read_text())["verdicts"].values()
    assert cached["accel"] == "tcg" and "emulation failure" in cached["reason"]


def test_a_forced_kvm_is_honoured_and_fails_the_case_instead(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted = stand_in_guests(monkeypatch, kvm_dies_at="virtio-scsi")
    runner, events = bench(env, "kvm", options_accel="kvm")
    outcome = runner.run()
    assert [accel for _, accel in booted] == ["kvm"] * 3
    assert list(outcome.failed) == ["virtio-scsi"]
    assert "emulation failure" in outcome.failed["virtio-scsi"]
    assert events.notices == []
    assert json.loads((outcome.run.path / "host.json").read_text())["accel"] == "kvm"


def test_under_tcg_nothing_falls_back(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    booted = stand_in_guests(monkeypatch, kvm_dies_at="virtio-scsi")
    outcome = bench(env, "tcg")[0].run()
    assert [accel for _, accel in booted] == ["tcg"] * 3 and outcome.ok


def test_a_resumed_run_that_had_switched_stays_on_tcg(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted = stand_in_guests(monkeypatch, kvm_dies_at="virtio-blk")
    first = bench(env, "kvm")[0].run()
    assert first.ok
    # Resumed on a later boot where the probe says KVM again: finished TCG cases are kept and
    # nothing runs under KVM, so the run still compares TCG with TCG.
    booted.clear()
    (first.run.path / "cases" / "nvme").rename(env / "nvme-gone")
    runner, events = bench(env, "kvm")
    resumed = runner.run(resume=first.run)
    assert booted == [("nvme", "tcg")]
    assert resumed.ok and len(resumed.results) == 6
    assert ("virtio-blk", "skipped") in events.finished


def test_host_line_names_the_forced_accelerator_not_the_probe() -> None:
    from vmlab.cli.bench import accel_used

    used, why = accel_used(facts("kvm"), "tcg", ["auto"])
    assert used == "tcg"
    assert why.startswith("forced by --accel tcg") and "probe: kvm" in why


def test_host_line_spec_accel_and_detection() -> None:
    from vmlab.cli.bench import accel_used

    assert accel_used(facts("kvm"), None, ["tcg", "tcg"])[0] == "tcg"
    assert "forced by accel: tcg in the spec" in accel_used(facts("kvm"), None, ["tcg"])[1]
    used, why = accel_used(facts("tcg"), None, ["auto"])
    assert (used, why) == ("tcg", "detected; the probe guest booted")
    assert accel_used(facts("kvm"), None, ["auto", "tcg"])[0] == "per case"
