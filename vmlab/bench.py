"""Run a bench: plan the cases, boot each guest once, run its fio jobs, store everything.

Every case runs inside context managers that stop QEMU and remove scratch disks on every path,
Ctrl-C included. A failing case is recorded and the bench moves on; an interrupt stops the
bench, marks the run `interrupted`, and keeps every case that finished.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from vmlab import __version__
from vmlab.accel import cache_key, remember
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.info import ClusterInfo
from vmlab.disks import ScratchDisks, local_source, scratch_disks, served_disks
from vmlab.errors import AccelError, GuestError, HostError, ResultError, VmlabError
from vmlab.fio.jobs import fio_command, fio_timeout_s, render_job
from vmlab.fio.parse import parse_fio_output, summarize
from vmlab.guest.boot import BootPlan, plan_boot
from vmlab.guest.cloudinit import check_instance_id, wait_cloud_init
from vmlab.guest.image import GuestImage
from vmlab.guest.ssh import GuestSSH, lab_key, public_line, wait_banner
from vmlab.host import AccelSwitch, HostFacts, pick_accel, require_qemu
from vmlab.launch.base import Launcher, LaunchRequest
from vmlab.launch.direct import QemuLauncher
from vmlab.launch.libvirt import LibvirtLauncher
from vmlab.launch.qemu import Deadlines, sweep_stale
from vmlab.net.iperf import (
    IperfServer,
    client_timeout_s,
    guest_client_command,
    parse_iperf,
    summarize_iperf,
)
from vmlab.net.lab import LabNetwork, LabNic, guest_ifname_command
from vmlab.net.netns import sweep_stale as sweep_stale_netns
from vmlab.paths import state_dir
from vmlab.plan import Case, plan
from vmlab.preflight import check_plan, plan_problems
from vmlab.render import DiskSource, pci_slot
from vmlab.resources import templates_dir
from vmlab.results.index import default_index_path, index_run
from vmlab.results.rundir import ArtifactDir, CaseDir, RunDir, now_iso
from vmlab.spec import BenchSpec, Disk, FileBackend, FioJob, Nic, RbdBackend
from vmlab.vfio import default_state_file, recover_stale, vfio_bound

log = logging.getLogger(__name__)

GUEST_JOB_PATH = "/tmp/vmlab-job.fio"
GUEST_FACTS_PATH = "/tmp/vmlab-facts.sh"


class BenchEvents(Protocol):
    """What a front end (Rich progress, plain CI logs, tests) hears about a running bench."""

    def case_started(self, case: Case, index: int, total: int) -> None: ...
    def stage(self, case: Case, what: str) -> None: ...
    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None: ...
    def case_finished(self, case: Case, status: str, error: str | None) -> None: ...
    def notice(self, text: str) -> None:
        """Something the person running the bench must not miss (the run switched to TCG)."""
        ...


class QuietEvents:
    def case_started(self, case: Case, index: int, total: int) -> None:
        log.info("case %d/%d: %s", index, total, case.id)

    def stage(self, case: Case, what: str) -> None:
        log.info("%s: %s", case.id, what)

    def job_finished(
        self, case: Case, job: str, repetition: int, metrics: dict[str, float]
    ) -> None:
        log.info("%s: %s r%d done", case.id, job, repetition)

    def case_finished(self, case: Case, status: str, error: str | None) -> None:
        log.info("%s: %s %s", case.id, status, error or "")

    def notice(self, text: str) -> None:
        log.warning("%s", text)


@dataclass(frozen=True)
class BenchOptions:
    results_root: Path
    timeout_scale: float = 1.0
    accel: str | None = None  # overrides the spec's accel for every case
    launcher: str | None = None  # overrides the spec's launcher for every case
    skip_unsupported: bool = False  # run what this host can, record the rest as unsupported
    libvirt_uri: str = "qemu:///system"
    lab_key_path: Path = field(default_factory=lambda: state_dir() / "lab" / "id_ed25519")


@dataclass(frozen=True)
class GuestCeph:
    info: ClusterInfo
    images: dict[str, tuple[str, str]]  # disk name -> (pool, image)


@dataclass
class JobOutcome:
    case_id: str
    job: str
    repetition: int
    metrics: dict[str, float]


@dataclass
class BenchOutcome:
    run: RunDir
    cases: list[Case]
    failed: dict[str, str] = field(default_factory=dict)
    results: list[JobOutcome] = field(default_factory=list)
    accel_switch: AccelSwitch | None = None  # the run started under KVM and went on under TCG

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_guest_facts(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"disks": {}}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "disk":
            parts = rest.split()
            if len(parts) >= 2:
                serial, device = parts[0], parts[1]
                queues = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
                pci = parts[3] if len(parts) > 3 and parts[3] != "-" else None
                facts["disks"][device] = {
                    "serial": None if serial == "-" else serial,
                    "queues": queues,
                    "pci": pci,
                }
        elif key:
            facts[key] = rest.strip()
    return facts


def find_disks(case: Case, seen: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Guest device node per spec disk: by serial, else by the PCI slot vmlab gave it."""
    devices: dict[str, str] = {}
    for index, disk in enumerate(case.variant.guest.disks):
        if disk.served_by == "guest":
            continue  # no device: fio's rbd engine in the guest talks to the cluster
        slot = f"0000:00:{int(pci_slot(index), 16):02x}.0"
        by_serial = [dev for dev, d in seen.items() if d.get("serial") == disk.serial]
        by_slot = [dev for dev, d in seen.items() if d.get("pci") == slot]
        found = by_serial or by_slot
        if len(found) != 1:
            have = ", ".join(
                f"{dev} ({d.get('serial') or d.get('pci')})" for dev, d in seen.items()
            )
            raise GuestError(
                f"disk {disk.name!r} (serial {disk.serial}, PCI {slot}) is "
                f"{'ambiguous' if found else 'not visible'} in the guest; it has: {have or 'none'}",
                hint="the guest kernel may lack the driver for this device model",
            )
        devices[disk.name] = found[0]
    return devices


def case_done(case_dir: CaseDir, accel: str | None = None) -> bool:
    """The case finished in an earlier attempt, under ``accel`` when one is given (a run never
    mixes accelerators: a case done under KVM runs again once the run has switched to TCG)."""
    status = case_dir.status()
    return status.get("status") == "ok" and (accel is None or status.get("accel", accel) == accel)


class Bench:
    """One bench run over a spec's cases."""

    def __init__(
        self,
        spec: BenchSpec,
        *,
        facts: HostFacts,
        image: GuestImage,
        options: BenchOptions,
        events: BenchEvents | None = None,
    ) -> None:
        self.spec = spec
        self.facts = facts
        self.image = image
        self.options = options
        self.events: BenchEvents = events or QuietEvents()
        self.key = lab_key(options.lab_key_path)
        self.guest_ceph: GuestCeph | None = None  # the current case's in-guest Ceph client
        # The accelerator of every case that leaves it to vmlab (accel: auto): the probe's
        # verdict, until a real guest shows KVM failing; then TCG for the whole run.
        self.accel = facts.accel
        self.launchers: dict[str, Launcher] = {
            "qemu": QemuLauncher(require_qemu(facts)),
            "libvirt": LibvirtLauncher(options.libvirt_uri),
        }

    def run(self, *, resume: RunDir | None = None) -> BenchOutcome:
        sweep_stale()
        sweep_stale_netns()
        recover_stale(default_state_file())  # devices a crashed run left bound to vfio-pci
        cases = plan(self.spec)
        skipped: dict[str, list[str]] = {}
        if self.options.skip_unsupported:
            skipped = plan_problems(cases, self.facts, accel_override=self.options.accel)
            for case in cases:
                if case.id in skipped:
                    self.events.case_finished(case, "unsupported", "; ".join(skipped[case.id]))
            cases = [c for c in cases if c.id not in skipped]
            if not cases:
                raise HostError(
                    "this host can run none of the spec's cases",
                    hint="run `vmlab render SPEC` and `vmlab host check`",
                )
        check_plan(
            cases, self.facts, accel_override=self.options.accel, baseline=self.spec.baseline
        )
        run = resume or self._new_run()
        if resume is not None:
            self._resume_accel(run)
        outcome = BenchOutcome(run=run, cases=cases)
        run.set_status(
            "running", started=now_iso(), cases=[c.id for c in cases], unsupported=skipped
        )
        status = "failed"
        try:
            with scratch_disks(run.run_id) as scratch:
                if self.spec.baseline:
                    self._run_baseline(run, cases, scratch, outcome)
                failure = self._run_cases(run, cases, scratch, outcome, resume=resume is not None)
                if failure is not None:  # KVM failed under a real guest: all again under TCG
                    self._switch_to_tcg(run, failure, outcome)
                    self._run_cases(run, cases, scratch, outcome, resume=True)
            status = "complete" if outcome.ok else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            run.set_status(
                status, finished=now_iso(), cases=[c.id for c in cases], failed=outcome.failed
            )
            self._index(run)  # after the final status, so the index records it
        return outcome

    def _run_cases(
        self,
        run: RunDir,
        cases: Sequence[Case],
        scratch: ScratchDisks,
        outcome: BenchOutcome,
        *,
        resume: bool,
    ) -> tuple[Case, AccelError] | None:
        """Every case in turn; stops at the first whose guest KVM failed under, when the run
        may still fall back to TCG (and returns it)."""
        for index, case in enumerate(cases, start=1):
            case_dir = run.case(case.id)
            accel, _ = self._case_accel(case)
            if resume and case_done(case_dir, accel):
                self.events.case_finished(case, "skipped", "finished in an earlier run")
                outcome.results.extend(self._stored(case, case_dir))
                continue
            self.events.case_started(case, index, len(cases))
            failure = self._run_case(case, case_dir, scratch, outcome)
            if failure is not None:
                return case, failure
        return None

    def _case_accel(self, case: Case) -> tuple[str, bool]:
        """The case's accelerator, and whether vmlab chose it (and so may fall back to TCG).
        One given by the user (--accel, or accel: in the spec) is honoured, never replaced."""
        wanted = self.options.accel or case.variant.accel
        if wanted != "auto":
            return pick_accel(self.facts, wanted), False
        return self.accel, self.accel == "kvm"

    def _resume_accel(self, run: RunDir) -> None:
        """A resumed run keeps the accelerator its finished cases ran under, if it still works
        here; a run that had switched to TCG stays on TCG."""
        try:
            stored = HostFacts.model_validate(run.read_json("host.json"))
        except (VmlabError, ValueError):
            return
        if stored.accel == "tcg" or self.facts.accel == "kvm":
            self.accel = stored.accel
            self.facts = self.facts.model_copy(
                update={
                    "accel": stored.accel,
                    "accel_reason": stored.accel_reason,
                    "accel_switch": stored.accel_switch,
                }
            )

    def _switch_to_tcg(
        self, run: RunDir, failure: tuple[Case, AccelError], outcome: BenchOutcome
    ) -> None:
        """Record why, in the run's host facts and the accelerator cache, and say so loudly.
        Cases already measured under KVM are measured again (their KVM results are kept under
        attempts/), so a comparison never mixes KVM and TCG."""
        case, error = failure
        switch = AccelSwitch(
            case=case.id, error=error.detail, probed_reason=self.facts.accel_reason, at=now_iso()
        )
        reason = f"KVM failed under the guest of case {case.id} ({error.detail}); switched to TCG"
        self.facts = self.facts.model_copy(
            update={"accel": "tcg", "accel_reason": reason, "accel_switch": switch}
        )
        self.accel = "tcg"
        run.replace_host_facts(self.facts.model_dump(mode="json"))
        if self.facts.qemu is not None:
            remember(
                cache_key(self.facts.qemu, self.facts.qemu_version, self.image.kernel),
                "tcg",
                f"/dev/kvm exists but a run saw the guest kernel fail under it: {error.detail}",
            )
        outcome.accel_switch = switch
        kept = {BASELINE_ID}
        outcome.results = [r for r in outcome.results if r.case_id in kept]
        outcome.failed = {k: v for k, v in outcome.failed.items() if k in kept}
        self.events.notice(
            f"KVM failed under the first real guest ({case.id}: {error.detail}). The probe had "
            f"said: {switch.probed_reason}. Every case of this run now runs under TCG, from the "
            "first; the switch is recorded in host.json."
        )

    def _index(self, run: RunDir) -> None:
        """Keep the SQLite index in step; the files are the truth, so a failure only warns."""
        try:
            index_run(default_index_path(self.options.results_root), run.path)
        except VmlabError as exc:
            log.warning("could not index %s: %s (run `vmlab results reindex`)", run.path, exc)

    def _new_run(self) -> RunDir:
        run = RunDir.create(self.options.results_root, self.spec.name)
        run.write_text("spec.yaml", self.spec.source or "# built from Python, see spec.json\n")
        run.write_json("spec.json", self.spec.model_dump(mode="json", exclude={"source"}))
        run.write_json("host.json", self.facts.model_dump(mode="json"))
        run.write_json(
            "image.json",
            {
                "key": self.image.key,
                "kernel": str(self.image.kernel),
                "kernel_version": self.image.kernel_version,
                "fio_version": self.image.fio_version,
            },
        )
        run.write_json("vmlab.json", {"version": __version__})
        return run

    def _stored(self, case: Case, case_dir: CaseDir) -> list[JobOutcome]:
        out = []
        for summary in sorted(case_dir.path.glob("jobs/*/r*/summary.json")):
            rep = int(summary.parent.name[1:])
            metrics = stored_metrics(summary)
            out.append(JobOutcome(case.id, summary.parent.parent.name, rep, metrics))
        return out

    # -- one case ------------------------------------------------------------------------
    def _run_case(
        self, case: Case, case_dir: CaseDir, scratch: ScratchDisks, outcome: BenchOutcome
    ) -> AccelError | None:
        """One case, recorded as ok or failed; returns the KVM failure instead when the case's
        accelerator was vmlab's choice (the run then falls back to TCG)."""
        if case_dir.path.exists():  # resumed after a failure or interrupt: keep what it left
            attempts = case_dir.path.parent.parent / "attempts"
            attempts.mkdir(exist_ok=True)
            n = 1 + sum(1 for _ in attempts.glob(f"{case.id}.*"))
            case_dir.path.rename(attempts / f"{case.id}.{n}")
        case_dir.write_json(
            "case.json",
            {
                "id": case.id,
                "params": dict(case.params),
                "variant": case.variant.model_dump(mode="json"),
            },
        )
        accel, may_fall_back = self._case_accel(case)
        case_dir.set_status("running", started=now_iso(), accel=accel)
        timings: dict[str, float] = {}
        try:
            self._boot_and_measure(case, case_dir, accel, scratch, outcome, timings)
        except AccelError as exc:
            if not may_fall_back:
                self._case_failed(case, case_dir, outcome, exc, timings)
                return None
            outcome.results = [r for r in outcome.results if r.case_id != case.id]
            case_dir.set_status("failed", error=str(exc), hint=exc.hint, timings=timings)
            return exc
        except VmlabError as exc:
            self._case_failed(case, case_dir, outcome, exc, timings)
            return None
        except KeyboardInterrupt:
            case_dir.set_status("interrupted", timings=timings)
            raise
        case_dir.set_status("ok", finished=now_iso(), timings=timings)
        self.events.case_finished(case, "ok", None)
        return None

    def _case_failed(
        self,
        case: Case,
        case_dir: CaseDir,
        outcome: BenchOutcome,
        exc: VmlabError,
        timings: dict[str, float],
    ) -> None:
        outcome.failed[case.id] = str(exc)
        case_dir.set_status("failed", error=str(exc), hint=exc.hint, timings=timings)
        self.events.case_finished(case, "failed", str(exc))

    def _boot_and_measure(
        self,
        case: Case,
        case_dir: CaseDir,
        accel: str,
        scratch: ScratchDisks,
        outcome: BenchOutcome,
        timings: dict[str, float],
    ) -> None:
        guest = case.variant.guest
        deadlines = Deadlines.for_accel(accel, self.options.timeout_scale)
        nonce = secrets.token_hex(8)
        self.guest_ceph = None
        if guest.image != "default":  # systemd and cloud-init boots take minutes under TCG
            deadlines = replace(
                deadlines, boot_s=deadlines.boot_s * 3, powerdown_s=deadlines.powerdown_s * 2
            )
        self.events.stage(case, "preparing the boot image")
        boot = plan_boot(
            case.id,
            guest,
            case_dir=case_dir,
            scratch=scratch.root / "boot",
            nonce=nonce,
            public_key=public_line(self.key),
            default=self.image,
        )
        request = LaunchRequest(
            case=case,
            case_dir=case_dir,
            accel=accel,
            boot=boot.boot,
            disks={},
            deadlines=deadlines,
            ready_marker=boot.ready_marker,
            failed_marker=boot.failed_marker,
        )
        launcher = self.launchers[self.options.launcher or case.variant.launcher]
        with ExitStack() as stack:
            if guest.hostdevs:  # bound to vfio-pci for this guest, restored after it
                stack.enter_context(vfio_bound(guest.hostdevs, state_file=default_state_file()))
            lab = stack.enter_context(LabNetwork()) if guest.nics else None
            nics = [self._add_nic(lab, launcher, case, n) for n in guest.nics] if lab else []
            if lab is not None:
                case_dir.write_json("network.json", network_record(lab, guest.nics, nics))
            in_guest = [d for d in guest.disks if d.served_by == "guest"]
            if in_guest and lab is not None:
                self.guest_ceph = self._lab_cluster(stack, lab, case, in_guest, scratch)
            disks = stack.enter_context(
                served_disks(
                    case,
                    scratch,
                    case_dir=case_dir,
                    deadlines=deadlines,
                    qsd=self.facts.qemu_storage_daemon,
                )
            )
            self.events.stage(case, f"booting ({launcher.name}, {accel})")
            self._boot(
                case,
                case_dir,
                launcher,
                replace(request, disks=disks, nics=nics),
                boot,
                nonce,
                timings,
                outcome,
                lab,
            )

    def _lab_cluster(
        self,
        stack: ExitStack,
        lab: LabNetwork,
        case: Case,
        disks: Sequence[Disk],
        scratch: ScratchDisks,
    ) -> GuestCeph:
        """A micro Ceph cluster inside the lab namespace, bound to the bridge address the guest
        reaches over its lab NIC; images for the case's in-guest RBD disks."""
        cluster = MicroCluster(
            scratch.root / f"ceph-{case.id}", bind_addr=str(lab.gateway), netns=lab.name
        )
        stack.callback(cluster.purge)
        self.events.stage(case, "starting a Ceph cluster in the lab network")
        info = cluster.up()
        images: dict[str, tuple[str, str]] = {}
        for disk in disks:
            backend = disk.backend
            assert isinstance(backend, RbdBackend)
            name = backend.image or f"vmlab-{disk.name}"
            cluster.ensure_pool(backend.pool)
            cluster.ensure_image(backend.pool, name, backend.size_bytes)
            images[disk.name] = (backend.pool, name)
        return GuestCeph(info=info, images=images)

    @staticmethod
    def _push_ceph_client(ssh: GuestSSH, ceph: GuestCeph) -> None:
        """ceph.conf and the keyring into the guest (the keyring goes nowhere else)."""
        conf = (
            f"[global]\nfsid = {ceph.info.fsid}\nmon host = {ceph.info.mon_addr}\n"
            "[client]\nkeyring = /etc/ceph/keyring\n"
        )
        ssh.run("mkdir -p /etc/ceph", timeout_s=30)
        ssh.put(conf.encode(), "/etc/ceph/ceph.conf")
        ssh.put(ceph.info.keyring_path.read_bytes(), "/etc/ceph/keyring", mode=0o600)

    @staticmethod
    def _add_nic(lab: LabNetwork, launcher: Launcher, case: Case, nic: Nic) -> LabNic:
        """Fds opened in the lab namespace, or a host-side port for a launcher that makes its own
        tap or macvtap (libvirt)."""
        if launcher.host_side_nics:
            return lab.add_host_port(case.id, nic.attach, queues=nic.queues, vhost=nic.vhost)
        add = lab.add_tap if nic.attach == "tap" else lab.add_macvtap
        return add(case.id, queues=nic.queues, vhost=nic.vhost)

    def _boot(
        self,
        case: Case,
        case_dir: CaseDir,
        launcher: Launcher,
        request: LaunchRequest,
        boot: BootPlan,
        nonce: str,
        timings: dict[str, float],
        outcome: BenchOutcome,
        lab: LabNetwork | None,
    ) -> None:
        deadlines = request.deadlines
        with launcher.launch(request) as vm:
            timings.update(vm.timings)
            self.events.stage(case, "waiting for SSH")
            wait_banner(vm.ssh_host, vm.ssh_port, timeout_s=deadlines.banner_s)
            timings["banner_s"] = time.monotonic() - vm.started_at

            def login(timeout_s: float) -> GuestSSH:
                return GuestSSH.connect(
                    vm.ssh_host,
                    vm.ssh_port,
                    user=boot.user,
                    key=self.key,
                    host_key=boot.host_key,
                    timeout_s=timeout_s,
                )

            with login(deadlines.login_s) as ssh:
                timings["ssh_ready_s"] = time.monotonic() - vm.started_at
                if boot.instance_id is not None:
                    check_instance_id(ssh, boot.instance_id)
                    self.events.stage(case, "waiting for cloud-init")
                    assert boot.cloud_init_timeout_s is not None
                    status = wait_cloud_init(
                        ssh,
                        timeout_s=boot.cloud_init_timeout_s * self.options.timeout_scale,
                        reconnect=login,
                        console_log=case_dir.file("serial.log"),
                    )
                    case_dir.write_json("cloud-init.json", status)
                    timings["cloud_init_s"] = time.monotonic() - vm.started_at
                else:
                    self._check_identity(ssh, nonce)
                devices = self._guest_facts(ssh, case, case_dir)
                self._configure_nics(ssh, request.nics)
                if self.guest_ceph is not None:
                    self._push_ceph_client(ssh, self.guest_ceph)
                self._run_jobs(case, case_dir, ssh, devices, deadlines, outcome)
                if lab is not None:
                    self._run_net_jobs(case, case_dir, ssh, lab, outcome)
            self.events.stage(case, "powering off")

    @staticmethod
    def _configure_nics(ssh: GuestSSH, nics: Sequence[LabNic]) -> None:
        """Give each lab NIC its address; the guest names NICs by MAC, never by ethN."""
        for nic in nics:
            ifname = ssh.run(guest_ifname_command(nic.mac), timeout_s=30).text.strip()
            if not ifname:
                raise GuestError(
                    f"the guest has no NIC with MAC {nic.mac}",
                    hint="the guest kernel may lack the NIC model's driver",
                )
            for command in nic.guest_commands(ifname):
                ssh.run(command, timeout_s=30)

    def _run_net_jobs(
        self, case: Case, case_dir: CaseDir, ssh: GuestSSH, lab: LabNetwork, outcome: BenchOutcome
    ) -> None:
        """iperf3: the guest is the client, a server in the lab namespace the peer."""
        server = str(lab.gateway)
        for job in self.spec.net_jobs:
            for repetition in self.repetitions():
                job_dir = case_dir.job(job.name, repetition)
                self.events.stage(case, f"iperf3 {job.name} r{repetition} ({job.duration_s} s)")
                with IperfServer(lab.netns, server, output=job_dir.file("server.json")):
                    result = ssh.run(
                        guest_client_command(
                            server,
                            duration_s=job.duration_s,
                            reverse=job.reverse,
                            parallel=job.parallel,
                        ),
                        timeout_s=client_timeout_s(job.duration_s),
                        check=False,
                    )
                raw = job_dir.write_bytes("iperf.json", result.stdout)  # before parsing
                job_dir.write_bytes("iperf.stderr", result.stderr)
                job_dir.write_json(
                    "exit.json", {"exit_code": result.exit_code, "command": result.command}
                )
                parsed = parse_iperf(result.stdout, path=raw)
                metrics = summarize_iperf(parsed)
                job_dir.write_json(
                    "summary.json", {"metrics": metrics, "iperf": parsed.model_dump(mode="json")}
                )
                outcome.results.append(JobOutcome(case.id, job.name, repetition, metrics))
                self.events.job_finished(case, job.name, repetition, metrics)

    def _check_identity(self, ssh: GuestSSH, nonce: str) -> None:
        """The guest on this port is the one we just booted, not a stale one."""
        cmdline = ssh.run("cat /proc/cmdline", timeout_s=30).text
        if f"vmlab.nonce={nonce}" not in cmdline:
            raise GuestError(
                "the guest that answered SSH is not the one vmlab booted",
                hint="a stale guest holds the port: `pkill -f qemu-system` it",
            )

    def _guest_facts(self, ssh: GuestSSH, case: Case, case_dir: CaseDir) -> dict[str, str]:
        script = (templates_dir() / "guest" / "facts.sh").read_bytes()
        ssh.put(script, GUEST_FACTS_PATH, mode=0o755)
        out = ssh.run(f"sh {GUEST_FACTS_PATH}", timeout_s=60)
        case_dir.write_bytes("guest-facts.txt", out.stdout)
        facts = parse_guest_facts(out.text)
        case_dir.write_json("guest.json", facts)
        return find_disks(case, facts["disks"])

    def _run_jobs(
        self,
        case: Case,
        case_dir: CaseDir,
        ssh: GuestSSH,
        devices: dict[str, str],
        deadlines: Deadlines,
        outcome: BenchOutcome,
    ) -> None:
        for spec_job in case.jobs:
            job = spec_job
            in_guest = self.guest_ceph.images.get(job.disk) if self.guest_ceph else None
            if in_guest is not None:  # fio's rbd engine, the guest as the Ceph client
                pool, image = in_guest
                options = {**job.options, "clientname": "admin", "pool": pool, "rbdname": image}
                job = job.model_copy(update={"ioengine": "rbd", "options": options})
            for repetition in self.repetitions():
                job_dir = case_dir.job(job.name, repetition)
                text = render_job(job, filename=devices.get(job.disk, ""), case_id=case.id)
                job_dir.write_text("job.fio", text)
                ssh.put(text.encode(), GUEST_JOB_PATH)
                self.events.stage(case, f"fio {job.name} r{repetition} ({job.runtime_s} s)")
                started = now_iso()
                result = ssh.run(
                    fio_command(GUEST_JOB_PATH),
                    check=False,
                    timeout_s=fio_timeout_s(job, slack_s=deadlines.login_s * 4),
                )
                metrics = store_fio(
                    job_dir,
                    result.stdout,
                    result.stderr,
                    result.exit_code,
                    result.command,
                    started,
                    job.name,
                )
                outcome.results.append(JobOutcome(case.id, job.name, repetition, metrics))
                self.events.job_finished(case, job.name, repetition, metrics)

    def repetitions(self) -> range:
        """r0 is the warm-up (stored, never counted), then r1..rN."""
        return range(0 if self.spec.warmup else 1, self.spec.repeat + 1)

    # -- host baseline -------------------------------------------------------------------
    def _run_baseline(
        self, run: RunDir, cases: list[Case], scratch: ScratchDisks, outcome: BenchOutcome
    ) -> None:
        """fio on the host against the same backing store: the limit a guest can approach."""
        case = Case(
            id=BASELINE_ID,
            params={"host": "baseline"},
            variant=cases[0].variant,
            jobs=cases[0].jobs,
        )
        case_dir = run.case(BASELINE_ID)
        if case_done(case_dir):
            outcome.results.extend(self._stored(case, case_dir))
            return
        self.events.case_started(case, 0, len(cases))
        disks = {d.name: d for d in case.variant.guest.disks}
        targets: dict[str, str] = {}
        sources: dict[str, DiskSource] = {}
        for name, disk in disks.items():
            source = local_source(case, disk, scratch)
            if source.format != "raw":  # fio writes raw bytes: keep qcow2 files intact
                source = local_source(
                    case,
                    disk.model_copy(
                        update={"backend": FileBackend(size=getattr(disk.backend, "size", "1G"))}
                    ),
                    scratch,
                )
            targets[name] = str(source.path)
            sources[name] = source
        case_dir.write_json(
            "case.json", {"id": BASELINE_ID, "params": dict(case.params), "targets": targets}
        )
        case_dir.set_status("running", started=now_iso())
        try:
            for job in case.jobs:
                for repetition in self.repetitions():
                    job_dir = case_dir.job(job.name, repetition)
                    host_job, env = host_fio_job(job, sources[job.disk])
                    text = render_job(
                        host_job, filename=env.pop("FILENAME", ""), case_id=BASELINE_ID
                    )
                    path = job_dir.write_text("job.fio", text)
                    self.events.stage(case, f"host fio {job.name} r{repetition}")
                    argv = ["fio", "--output-format=json+", str(path)]
                    started = now_iso()
                    try:
                        done = subprocess.run(
                            argv,
                            capture_output=True,
                            check=False,
                            env={**os.environ, **env},
                            timeout=fio_timeout_s(job, slack_s=60),
                        )
                    except subprocess.TimeoutExpired as exc:
                        raise ResultError("host fio did not finish", path=path) from exc
                    metrics = store_fio(
                        job_dir,
                        done.stdout,
                        done.stderr,
                        done.returncode,
                        shlex.join(argv),
                        started,
                        job.name,
                    )
                    outcome.results.append(JobOutcome(BASELINE_ID, job.name, repetition, metrics))
                    self.events.job_finished(case, job.name, repetition, metrics)
        except VmlabError as exc:
            outcome.failed[BASELINE_ID] = str(exc)
            case_dir.set_status("failed", error=str(exc), hint=exc.hint)
            self.events.case_finished(case, "failed", str(exc))
            return
        case_dir.set_status("ok", finished=now_iso())
        self.events.case_finished(case, "ok", None)


BASELINE_ID = "host-baseline"


def host_fio_job(job: FioJob, source: DiskSource) -> tuple[FioJob, dict[str, str]]:
    """The job as fio on the host runs it against a disk's backing store, and its environment
    (FILENAME for files and devices; RBD goes through fio's rbd engine and CEPH_CONF)."""
    if source.rbd is None:
        return job, {"FILENAME": str(source.path)}
    options = {
        **job.options,
        "clientname": source.rbd.user,
        "pool": source.rbd.pool,
        "rbdname": source.rbd.image,
    }
    return job.model_copy(update={"ioengine": "rbd", "options": options}), {
        "CEPH_CONF": str(source.rbd.conf)
    }


def store_fio(
    job_dir: ArtifactDir,
    stdout: bytes,
    stderr: bytes,
    exit_code: int,
    command: str,
    started: str,
    job: str,
) -> dict[str, float]:
    """Save fio's raw output first, then parse it; returns the flat metrics."""
    raw = job_dir.write_bytes("fio.json", stdout)
    job_dir.write_bytes("fio.stderr", stderr)
    job_dir.write_json(
        "exit.json",
        {"exit_code": exit_code, "started": started, "finished": now_iso(), "command": command},
    )
    if exit_code != 0:
        err = stderr.decode(errors="replace").strip()[-400:]
        raise GuestError(f"fio job {job} exited {exit_code}: {err}", hint=f"see {raw.parent}")
    parsed = parse_fio_output(stdout.decode(errors="replace"), source=str(raw))
    if not parsed.jobs:
        raise ResultError("fio reported no jobs", path=raw)
    metrics = summarize(parsed.jobs[0])
    job_dir.write_json("summary.json", {"metrics": metrics, "fio": parsed.model_dump(mode="json")})
    return metrics


def network_record(lab: LabNetwork, specs: Sequence[Nic], nics: Sequence[LabNic]) -> dict[str, Any]:
    return {
        "namespace": lab.name,
        "gateway": str(lab.gateway),
        "nics": [
            {
                "name": spec.name,
                "attach": nic.kind,
                "model": spec.model,
                "mac": nic.mac,
                "address": str(nic.address),
                "queues": nic.queues,
                "vhost": nic.vhost,
            }
            for spec, nic in zip(specs, nics, strict=True)
        ],
    }


def stored_metrics(summary_path: Path) -> dict[str, float]:
    data = json.loads(summary_path.read_text())
    return {str(k): float(v) for k, v in data["metrics"].items()}


def run_bench(
    spec: BenchSpec,
    *,
    facts: HostFacts,
    image: GuestImage,
    options: BenchOptions,
    events: BenchEvents | None = None,
    resume: RunDir | None = None,
) -> BenchOutcome:
    return Bench(spec, facts=facts, image=image, options=options, events=events).run(resume=resume)
