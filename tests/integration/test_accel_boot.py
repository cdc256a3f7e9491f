"""The accelerator verdict on this host, and a run that finds KVM failing under a real guest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vmlab.accel import probe_kernel, probe_sector
from vmlab.bench import BenchOptions, run_bench
from vmlab.guest.image import GuestImage
from vmlab.host import check_host
from vmlab.spec import default_lab

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"


def kvm_device() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def test_the_kernel_probe_reaches_userspace_through_the_real_guest_kernel(
    guest_image: GuestImage, lab_env: dict[str, str]
) -> None:
    # Under TCG, so it runs anywhere: the one-file initramfs is right, and a KVM that fails the
    # probe fails it for KVM's reasons, not the probe's.
    outcome = probe_kernel(QEMU, guest_image.kernel, accel="tcg", timeout_s=90)
    assert outcome.ok, outcome.detail
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []


def test_the_verdict_is_kvm_only_where_the_guest_kernel_boots_under_it(
    guest_image: GuestImage, lab_env: dict[str, str]
) -> None:
    facts = check_host(kernel=guest_image.kernel, use_cache=False)
    if not kvm_device():
        assert (facts.accel, facts.accel_reason) == ("tcg", "/dev/kvm is absent or not accessible")
        return
    kernel = probe_kernel(QEMU, guest_image.kernel)
    assert facts.accel == ("kvm" if kernel.ok else "tcg"), facts.accel_reason
    if not kernel.ok:  # the reason says what was tried and what failed
        assert kernel.detail in facts.accel_reason
        sector = probe_sector(QEMU)
        assert ("boot sector but the guest kernel dies" in facts.accel_reason) == sector.ok
    if facts.kvm_module == "kvm_pvm":
        assert facts.accel == "tcg" and "PVM" in facts.kvm_note


def test_kvm_failing_under_the_first_guest_reruns_the_whole_run_under_tcg(
    guest_image: GuestImage,
    lab_env: dict[str, str],
    qemu_pids: Callable[[str], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe fooled into saying KVM (as a boot-sector probe was on PVM hosts): the first real
    guest dies under this host's KVM, and the run goes on under TCG, every case of it."""
    if not kvm_device():
        pytest.skip("needs a /dev/kvm that cannot run guests (this host has none)")
    if probe_kernel(QEMU, guest_image.kernel).ok:
        pytest.skip("KVM runs guests on this host: nothing to fall back from")
    monkeypatch.setenv("VMLAB_CACHE", str(tmp_path / "cache"))  # keep the real verdict cache
    probed = check_host(kernel=guest_image.kernel, use_cache=False)
    fooled = probed.model_copy(update={"accel": "kvm", "accel_reason": "a fooled probe"})
    spec = default_lab().model_copy(update={"runtime_s": 1})
    notices: list[str] = []

    class Events:
        def case_started(self, case: object, index: int, total: int) -> None: ...
        def stage(self, case: object, what: str) -> None: ...
        def job_finished(self, *args: object) -> None: ...
        def job_stopped(self, *args: object) -> None: ...
        def case_finished(self, case: object, status: str, error: str | None) -> None: ...
        def notice(self, text: str) -> None:
            notices.append(text)

    results = Path(lab_env["RESULTS"])
    outcome = run_bench(
        spec,
        facts=fooled,
        image=guest_image,
        options=BenchOptions(results_root=results, lab_key_path=tmp_path / "key"),
        events=Events(),
    )
    assert outcome.ok, outcome.failed
    assert {r.case_id for r in outcome.results} == {"virtio-blk", "virtio-scsi", "nvme"}
    (notice,) = notices
    assert "virtio-blk" in notice and "TCG" in notice
    run = outcome.run.path
    host = json.loads((run / "host.json").read_text())
    assert host["accel"] == "tcg"
    assert host["accel_switch"]["case"] == "virtio-blk"
    assert host["accel_switch"]["probed_reason"] == "a fooled probe"
    for case in ("virtio-blk", "virtio-scsi", "nvme"):
        status = json.loads((run / "cases" / case / "status.json").read_text())
        assert (status["status"], status["accel"]) == ("ok", "tcg")
        assert "accel=tcg" in " ".join(json.loads((run / "cases" / case / "argv.json").read_text()))
    # What KVM did is kept: the first guest's argv, QEMU log and error under attempts/.
    (attempt,) = (run / "attempts").iterdir()
    assert attempt.name == "virtio-blk.1"
    assert "accel=kvm" in (attempt / "argv.sh").read_text()
    failed = json.loads((attempt / "status.json").read_text())
    assert (failed["status"], failed["accel"]) == ("failed", "kvm")
    assert host["accel_switch"]["error"] in failed["error"]
    # The next run on this boot does not try KVM again: the run's verdict is cached.
    assert "a run saw the guest kernel fail" in check_host(kernel=guest_image.kernel).accel_reason
    assert qemu_pids(str(run)) == []
    assert list(Path(lab_env["VMLAB_RUNTIME"]).iterdir()) == []
