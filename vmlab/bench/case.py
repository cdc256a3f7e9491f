"""One case's guest, from nothing to measured and back to nothing.

Everything the guest needs is entered into one ExitStack in order — VFIO bindings, the lab
network and its NICs, a private runtime folder (secrets, sockets), the served disks (sidecars,
targets) and their watchdog, the guest itself, the SSH session — and leaves in reverse order on
every path, Ctrl-C and failures included.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko

from vmlab.bench.events import BenchEvents
from vmlab.bench.outcome import JobOutcome
from vmlab.bench.reach import Reach, configure_nics, reach, record_facts
from vmlab.bench.watch import Watchdog
from vmlab.bench.workloads import JobContext
from vmlab.bench.workloads.fio import run_guest_jobs
from vmlab.bench.workloads.iperf import run_net_jobs
from vmlab.errors import SpecError
from vmlab.guest.boot import needs_full_image, plan_boot
from vmlab.guest.image import GuestImage
from vmlab.guest.ssh import public_line
from vmlab.launch.base import Launcher, LaunchRequest
from vmlab.launch.libvirt_owner import network_owner_tag
from vmlab.launch.qemu import Deadlines, new_guest_dir
from vmlab.net.lab import LabNetwork, LabNic
from vmlab.plan import Case
from vmlab.results.rundir import CaseDir
from vmlab.spdk.targets import SpdkTargets
from vmlab.spec import BenchSpec, Guest, Nic
from vmlab.storage import served_disks
from vmlab.storage.backing import RunBacking
from vmlab.storage.base import ServeContext
from vmlab.vfio import default_state_file, vfio_bound


@dataclass(frozen=True)
class CaseEnv:
    """What every case of one bench shares."""

    spec: BenchSpec
    image: GuestImage
    key: paramiko.PKey
    backing: RunBacking
    events: BenchEvents
    qsd: str | None
    timeout_scale: float
    spdk: SpdkTargets | None = None  # the run's SPDK targets


def deadlines_for(guest: Guest, accel: str, scale: float) -> Deadlines:
    deadlines = Deadlines.for_accel(accel, scale)
    if guest.image != "default":  # systemd and cloud-init boots take minutes under TCG
        deadlines = replace(
            deadlines, boot_s=deadlines.boot_s * 3, powerdown_s=deadlines.powerdown_s * 2
        )
    return deadlines


@contextmanager
def private_dir() -> Iterator[Path]:
    """A 0700 folder for one case's secrets and sockets, gone when the case ends."""
    path = new_guest_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def add_nic(lab: LabNetwork, launcher: Launcher, case: Case, nic: Nic) -> LabNic:
    """Fds opened in the lab namespace, or a host-side port for a launcher that makes its own
    tap or macvtap (libvirt), or a libvirt network of the NIC's own (attach network)."""
    if nic.attach == "network":
        if not launcher.host_side_nics:
            raise SpecError(
                f"NIC {nic.name}: attach network joins a libvirt network, and this case runs "
                f"with launcher {launcher.name}",
                hint="run it with launcher: libvirt (or --launcher libvirt)",
            )
        return lab.add_network_port(
            case.id,
            forward=nic.forward_mode,
            owner=network_owner_tag(),
            queues=nic.queues,
            vhost=nic.vhost,
        )
    if launcher.host_side_nics:
        return lab.add_host_port(case.id, nic.attach, queues=nic.queues, vhost=nic.vhost)
    add = lab.add_tap if nic.attach == "tap" else lab.add_macvtap
    return add(case.id, queues=nic.queues, vhost=nic.vhost)


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
                **(
                    {
                        "network": nic.network.name,
                        "forward": nic.network.forward,
                        "network_address": str(nic.network.address),
                        "routes": list(nic.routes),
                    }
                    if nic.network is not None
                    else {}
                ),
            }
            for spec, nic in zip(specs, nics, strict=True)
        ],
    }


def measure_case(
    env: CaseEnv,
    case: Case,
    case_dir: CaseDir,
    *,
    accel: str,
    launcher: Launcher,
    jobs: JobContext,
    timings: dict[str, float],
) -> None:
    """Boot the case's guest once and run every job of the case in it.

    ``timings`` gets each stage's mark (vmlab.report.stages reads them): ``prepare_s`` before
    the launch, marks in seconds since the launch (``qmp_s`` ... ``jobs_done_s``), the nominal
    ``workload_s``, and the ``shutdown_s`` and ``total_s`` durations."""
    t0 = time.monotonic()
    guest = case.variant.guest
    deadlines = deadlines_for(guest, accel, env.timeout_scale)
    nonce = secrets.token_hex(8)

    def stage(what: str) -> None:
        env.events.stage(case, what)

    stage("preparing the boot image")
    boot = plan_boot(
        case.id,
        guest,
        case_dir=case_dir,
        scratch=env.backing.root / "boot",
        nonce=nonce,
        public_key=public_line(env.key),
        default=env.image,
        full=needs_full_image(guest, case.jobs),
    )
    with ExitStack() as stack:
        if guest.hostdevs:  # bound to vfio-pci for this guest, restored after it
            stack.enter_context(vfio_bound(guest.hostdevs, state_file=default_state_file()))
        # A libvirt network reaches the lab's peers through the host: an uplink with an address.
        routed = any(n.attach == "network" for n in guest.nics)
        lab = (
            stack.enter_context(LabNetwork(uplink=routed, uplink_address=routed))
            if guest.nics
            else None
        )
        nics = [add_nic(lab, launcher, case, n) for n in guest.nics] if lab else []
        if lab is not None:
            case_dir.write_json("network.json", network_record(lab, guest.nics, nics))
        storage = ServeContext(
            case=case,
            case_dir=case_dir,
            deadlines=deadlines,
            private_dir=stack.enter_context(private_dir()),
            scratch_root=env.backing.root,
            qsd=env.qsd,
            lab=lab,
            stage=stage,
            spdk=env.spdk,
        )
        disks: Mapping[str, Any] = stack.enter_context(served_disks(case, env.backing, storage))
        watchdog = stack.enter_context(Watchdog(storage.watchers))
        stack.enter_context(watchdog.guard())  # a server that died is why the case failed
        stage(f"booting ({launcher.name}, {accel})")
        request = LaunchRequest(
            case=case,
            case_dir=case_dir,
            accel=accel,
            boot=boot.boot,
            disks=disks,
            deadlines=deadlines,
            ready_marker=boot.ready_marker,
            failed_marker=boot.failed_marker,
            nics=nics,
        )
        vm = stack.enter_context(launcher.launch(request))
        timings["prepare_s"] = vm.started_at - t0
        timings.update(vm.timings)
        where = Reach(
            vm=vm,
            boot=boot,
            key=env.key,
            nonce=nonce,
            deadlines=deadlines,
            case_dir=case_dir,
            timings=timings,
            timeout_scale=env.timeout_scale,
        )
        ssh = stack.enter_context(reach(where, stage))
        watchdog.on_trip(ssh.close)  # a fio call blocked on a dead server returns at once
        known_fio = env.image.fio_version if guest.image == "default" else None
        devices = record_facts(ssh, case, case_dir, fio_version=known_fio)
        configure_nics(ssh, nics)
        if storage.guest_ceph is not None:
            storage.guest_ceph.push_client(ssh)
            if storage.guest_ceph.krbd:
                stage("mapping RBD images with the guest's kernel driver")
                devices.update(storage.guest_ceph.map_krbd(ssh))
        where.mark("facts_s")
        carried = len(jobs.outcome.of(case.id))  # a resumed case's repetitions ran elsewhere
        run_guest_jobs(
            jobs, ssh, devices, slack_s=deadlines.login_s * 4, guest_ceph=storage.guest_ceph
        )
        if lab is not None:
            run_net_jobs(jobs, ssh, lab, env.spec.net_jobs)
        ran = jobs.outcome.of(case.id)[carried:]
        timings["workload_s"] = workload_s(case, ran, env.spec if lab else None)
        where.mark("jobs_done_s")
        stage("powering off")
        off = time.monotonic()
    timings["shutdown_s"] = time.monotonic() - off
    timings["total_s"] = time.monotonic() - t0


def workload_s(case: Case, ran: Sequence[JobOutcome], spec: BenchSpec | None) -> float:
    """How long this guest's jobs were asked to measure: each fio repetition's runtime and ramp
    (and with ``spec``, each iperf3 repetition's duration), over the repetitions that ran in it
    (a job that repeats until sure stops when it is). The rest of a case's wall time is
    vmlab's overhead."""
    asked = {job.name: float(job.runtime_s + job.ramp_s) for job in case.jobs}
    if spec is not None:
        asked.update({job.name: float(job.duration_s) for job in spec.net_jobs})
    return sum(asked.get(r.job, 0.0) for r in ran)
