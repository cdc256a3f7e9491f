"""The accelerator verdict: the probe guests, QEMU's words for a failing KVM, the decision."""

from __future__ import annotations

import io
import itertools
import json
import platform
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmlab import accel
from vmlab.accel import (
    PROBE_MARKER,
    ProbeOutcome,
    boot_sector,
    decide,
    kvm_note,
    probe_init,
    probe_initramfs,
)
from vmlab.errors import AccelError, LaunchError, VmlabError
from vmlab.guest.cpio import iter_entries
from vmlab.host import HostFacts, pick_accel
from vmlab.launch import watch as watch_module
from vmlab.launch.watch import CHECK_S, POLL_S, kvm_failure, wait_marker

# What QEMU 7.2 printed on hosts of this project's machine kinds.
PVM_INTERNAL_ERROR = """\
KVM internal error. Suberror: 1
extra data[0]: 0x0000000000000000
extra data[1]: 0x0000000000000000
emulation failure
RAX=0000000000000000 RBX=0000000000000000 RCX=00000000c0000080 RDX=0000000000000000
"""
MSR_ABORT = """\
qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69
qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion \
`ret == cpu->kvm_msr_buf->nmsrs' failed.
"""
HARMLESS = "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX\n"


def test_boot_sector_is_a_valid_mbr_that_carries_the_marker() -> None:
    sector = boot_sector()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    # mov si, imm16 points at the message inside the sector loaded at 0x7c00
    offset = int.from_bytes(sector[6:8], "little") - 0x7C00
    assert sector[offset:].startswith(PROBE_MARKER.encode())


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64", reason="an x86-64 Linux ELF"
)
def test_probe_init_is_a_static_elf_that_prints_the_marker_and_exits_0(tmp_path: Path) -> None:
    # It only calls write and exit, so the host can run it as the guest kernel would.
    init = tmp_path / "init"
    init.write_bytes(probe_init())
    init.chmod(0o755)
    done = subprocess.run([str(init)], capture_output=True, timeout=10, check=False)
    assert (done.returncode, done.stdout) == (0, (PROBE_MARKER + "\n").encode())


def test_probe_initramfs_holds_the_console_and_the_init() -> None:
    entries = {e.name: e for e in iter_entries(io.BytesIO(probe_initramfs()))}
    assert entries["init"].data == probe_init() and entries["init"].mode & 0o111
    console = entries["dev/console"]
    assert console.is_chardev and (console.rdevmajor, console.rdevminor) == (5, 1)


def test_qemu_words_for_a_failing_kvm_are_found_and_warnings_are_not() -> None:
    assert kvm_failure(HARMLESS + PVM_INTERNAL_ERROR) == (
        "KVM internal error. Suberror: 1 ... emulation failure"
    )
    assert kvm_failure(MSR_ABORT) == "error: failed to set MSR 0x10a to 0x69"
    assert kvm_failure(HARMLESS) is None
    assert kvm_failure("") is None


def never() -> ProbeOutcome:
    raise AssertionError("this probe must not run")


def test_kvm_absent_is_tcg_without_booting_anything() -> None:
    verdict = decide(kvm_usable=False, module=None, sector=never, kernel=never)
    assert verdict == ("tcg", "/dev/kvm is absent or not accessible")


def test_neither_boots_the_kernel_is_not_even_tried() -> None:
    accel_, why = decide(
        kvm_usable=True,
        module="kvm_intel",
        sector=lambda: ProbeOutcome(False, "error: failed to set MSR 0x10a to 0x69"),
        kernel=never,
    )
    assert accel_ == "tcg"
    assert "not even a boot sector" in why and "MSR 0x10a" in why


def test_the_sector_boots_but_the_kernel_dies_is_tcg_and_names_pvm() -> None:
    accel_, why = decide(
        kvm_usable=True,
        module="kvm_pvm",
        sector=lambda: ProbeOutcome(True, "ran", 0.3),
        kernel=lambda: ProbeOutcome(False, "KVM internal error. Suberror: 1 ... emulation failure"),
    )
    assert accel_ == "tcg"
    assert "boot sector but the guest kernel dies" in why
    assert "emulation failure" in why and "PVM" in why


def test_both_boot_is_kvm() -> None:
    verdict = decide(
        kvm_usable=True,
        module="kvm_intel",
        sector=lambda: ProbeOutcome(True, "ran", 0.2),
        kernel=lambda: ProbeOutcome(True, "ran", 0.9),
    )
    assert verdict == ("kvm", "a guest kernel reached userspace under KVM in 0.9 s")


def test_no_kernel_to_prove_kvm_with_is_tcg_and_says_how_to_get_one() -> None:
    accel_, why = decide(
        kvm_usable=True,
        module="kvm_amd",
        sector=lambda: ProbeOutcome(True, "ran", 0.2),
        kernel=None,
    )
    assert accel_ == "tcg" and "vmlab image build" in why


def test_the_verdict_is_cached_per_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(accel.os, "access", lambda *_: True)
    probes: list[str] = []

    def sector(qemu: str) -> ProbeOutcome:
        probes.append("sector")
        return ProbeOutcome(True, "ran", 0.1)

    def kernel(qemu: str, path: Path) -> ProbeOutcome:
        probes.append(f"kernel {path.name}")
        return ProbeOutcome(False, "KVM internal error. Suberror: 1 ... emulation failure")

    monkeypatch.setattr(accel, "probe_sector", sector)
    monkeypatch.setattr(accel, "probe_kernel", kernel)
    one, two = tmp_path / "vmlinux-1", tmp_path / "vmlinux-2"
    one.write_bytes(b"1")
    two.write_bytes(b"22")
    first = accel.detect_accel("qemu", "7.2", one)
    again = accel.detect_accel("qemu", "7.2", one)
    other = accel.detect_accel("qemu", "7.2", two)
    assert first[0] == again[0] == other[0] == "tcg"
    assert again[1] == f"{first[1]} (cached for this boot)"
    assert probes == ["sector", "kernel vmlinux-1", "sector", "kernel vmlinux-2"]
    # Alternating between two kernels (two vmlab trees, two images) probes neither again.
    assert accel.detect_accel("qemu", "7.2", one)[1] == again[1]
    assert accel.detect_accel("qemu", "7.2", two)[1].endswith("(cached for this boot)")
    assert len(probes) == 4
    accel.detect_accel("qemu", "7.2", one, use_cache=False)
    assert probes[-1] == "kernel vmlinux-1"
    # After a reboot the old verdicts prove nothing: probed again, and dropped from the file.
    monkeypatch.setattr(accel, "_boot_id", lambda: "another-boot")
    accel.detect_accel("qemu", "7.2", one)
    assert probes[-1] == "kernel vmlinux-1" and len(probes) == 8
    saved = json.loads((tmp_path / "cache" / "accel.json").read_text())["verdicts"]
    assert list(saved) == [accel.cache_key("qemu", "7.2", one)]


def test_host_check_explains_pvm_and_a_kvm_that_cannot_run_guests() -> None:
    assert "PVM hypervisor" in kvm_note("kvm_pvm", "tcg", kvm_device=True)
    assert "cannot run an ordinary guest kernel" in kvm_note("kvm_intel", "tcg", kvm_device=True)
    assert "no /dev/kvm" in kvm_note(None, "tcg", kvm_device=False)
    assert kvm_note("kvm_intel", "kvm", kvm_device=True).endswith("guests run under KVM")


# --- watching a boot -------------------------------------------------------------------------


def watch(tmp_path: Path, *, accel_: str, serial: str, qemu: str, timeout_s: float = 0.3) -> float:
    (tmp_path / "serial.log").write_text(serial)
    (tmp_path / "qemu.log").write_text(qemu)
    return wait_marker(
        tmp_path / "serial.log",
        "READY",
        failed=None,
        timeout_s=timeout_s,
        started_at=time.monotonic(),
        accel=accel_,
        qemu_log=tmp_path / "qemu.log",
        check_alive=lambda when: None,
    )


def test_a_kvm_internal_error_fails_at_once_although_qemu_is_alive(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(AccelError) as caught:
        watch(tmp_path, accel_="kvm", serial="", qemu=PVM_INTERNAL_ERROR, timeout_s=30)
    assert time.monotonic() - started < 5
    assert caught.value.detail == "KVM internal error. Suberror: 1 ... emulation failure"


def test_a_silent_guest_under_kvm_is_a_kvm_failure_and_under_tcg_a_timeout(
    tmp_path: Path,
) -> None:
    with pytest.raises(AccelError, match="printed nothing under KVM"):
        watch(tmp_path, accel_="kvm", serial="", qemu="")
    with pytest.raises(LaunchError) as caught:
        watch(tmp_path, accel_="tcg", serial="", qemu=PVM_INTERNAL_ERROR)
    assert not isinstance(caught.value, AccelError)
    with pytest.raises(LaunchError) as caught:  # it printed: the guest, not KVM, is stuck
        watch(tmp_path, accel_="kvm", serial="Linux version 6.1", qemu="")
    assert not isinstance(caught.value, AccelError)


def test_qemu_that_aborted_on_a_kvm_msr_is_a_kvm_failure(tmp_path: Path) -> None:
    def gone(when: str) -> None:
        raise LaunchError(f"QEMU exited with status -6 {when}")

    (tmp_path / "serial.log").write_text("")
    (tmp_path / "qemu.log").write_text(MSR_ABORT)
    with pytest.raises(AccelError, match="MSR 0x10a"):
        wait_marker(
            tmp_path / "serial.log",
            "READY",
            failed=None,
            timeout_s=5,
            started_at=time.monotonic(),
            accel="kvm",
            qemu_log=tmp_path / "qemu.log",
            check_alive=gone,
        )


def test_the_marker_wins(tmp_path: Path) -> None:
    assert watch(tmp_path, accel_="kvm", serial="x READY y", qemu="") >= 0


# --- asking for an accelerator ---------------------------------------------------------------


def facts(accel_: str) -> HostFacts:
    return HostFacts(
        hostname="h",
        kernel="k",
        cpus=2,
        memory_mib=1,
        qemu="q",
        qemu_version="7.2",
        qemu_img=None,
        qemu_storage_daemon=None,
        fio_version=None,
        accel=accel_,  # type: ignore[arg-type]
        accel_reason="probe said so",
        kvm_device=True,
        vhost_net=False,
        iommu_groups=0,
        hugepages_2m_total=0,
        hugepages_2m_free=0,
        missing=[],
    )


def test_auto_takes_the_verdict_and_kvm_is_refused_when_it_does_not_work() -> None:
    assert pick_accel(facts("tcg"), "auto") == "tcg"
    assert pick_accel(facts("kvm"), "auto") == "kvm"
    assert pick_accel(facts("kvm"), "tcg") == "tcg"
    with pytest.raises(VmlabError, match=r"KVM was asked for .*, but probe said so"):
        pick_accel(facts("tcg"), "kvm")


def test_the_marker_is_seen_within_a_poll_and_the_checks_keep_their_own_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serial log is read every POLL_S (a boot is timed to about that), QEMU's liveness
    only every CHECK_S. On a fake clock, so the counts are exact, not timings."""
    serial = tmp_path / "serial.log"
    serial.write_text("")
    clock = [1000.0]
    checks: list[float] = []

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] >= 1000.5 and not serial.read_text():  # the guest prints at 0.5 s
            serial.write_text("READY\n")

    # the module's own clock only (patching time itself would reach pytest too)
    monkeypatch.setattr(
        watch_module, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep)
    )
    seen = wait_marker(
        serial,
        "READY",
        failed=None,
        timeout_s=10,
        started_at=1000.0,
        accel="tcg",
        qemu_log=None,
        check_alive=lambda when: checks.append(clock[0]),
    )
    assert 0.5 <= seen < 0.5 + POLL_S + 1e-9, seen
    assert len(checks) == 5, checks  # at 0, 0.1, 0.2, 0.3, 0.4 s
    assert all(b - a >= CHECK_S - 1e-9 for a, b in itertools.pairwise(checks))


@pytest.mark.parametrize(
    ("chunks", "outcome"),
    [
        (["Linux version 6.1\nRE", "A", "DY\n"], "ready"),  # the marker cut across reads
        (["x" * 5000, "\nINIT-FA", "ILED: no eth0\nmore"], "failed"),
        (["Kernel pa", "nic - not syncing"], "panic"),
    ],
)
def test_words_cut_between_two_reads_of_the_serial_log_are_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[str], outcome: str
) -> None:
    """Each poll reads only what the log gained; a word split across two writes is found
    where the two parts meet. On a fake clock: one chunk more per poll."""
    serial = tmp_path / "serial.log"
    serial.write_text("")
    clock = [1000.0]
    pending = list(chunks)

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        if pending:
            with serial.open("a") as fh:
                fh.write(pending.pop(0))

    monkeypatch.setattr(
        watch_module, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep)
    )

    def run() -> float:
        return wait_marker(
            serial,
            "READY",
            failed="INIT-FAILED",
            timeout_s=10,
            started_at=1000.0,
            accel="tcg",
            qemu_log=None,
            check_alive=lambda when: None,
        )

    if outcome == "ready":
        assert run() == pytest.approx(3 * POLL_S)  # seen once the last part came
    else:
        with pytest.raises(LaunchError) as caught:
            run()
        expected = "INIT-FAILED: no eth0" if outcome == "failed" else "panicked"
        assert expected in str(caught.value)
    assert not pending
