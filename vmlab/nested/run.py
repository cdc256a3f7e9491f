"""A nested bench: each L1 host of the plan built (cached), booted, the inner spec run inside
it, and its run directory brought back into one run on this host.

The host's run::

    <run>/
      spec.yaml spec.json image.json vmlab.json   as for any run (the spec as the user wrote it)
      host.json             this host's facts; ``nested`` names each L1: kernel, accelerators,
                            /dev/vhost-net and the lab's kernel modules as L1 has them
      cases/<case>/         each case as the inner run stored it, under the host's case id;
                            case.json's params gain ``host: <L1 label>``
      hosts/<label>.json    L1's own host facts (what vmlab inside it probed)
      hosts/<label>/        the rest of the inner run, and l1/: L1's serial and QEMU logs, its
                            argv, plan.json (what went into it) and the inner bench.log

L1's disk is a qcow2 overlay in a work directory removed on every exit path (Ctrl-C included);
the L1 image stays in the cache. A failing L1 fails its cases and the bench goes on. On Ctrl-C
the inner bench is stopped as an interrupted run and what it finished is brought back first.
The inner run comes back as a tar too (``hosts/<label>/l1/inner-results.tar``, as it left L1):
``--resume`` skips an L1 whose cases all finished and sends that tar into a new L1, where the
inner bench resumes its own run (earlier attempts move to ``attempts/hosts/``).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmlab.bench.events import BenchEvents, QuietEvents
from vmlab.bench.outcome import BenchOptions, BenchOutcome, JobOutcome
from vmlab.bench.run import new_run
from vmlab.errors import VmlabError
from vmlab.guest.image import GuestImage
from vmlab.guest.rootfs import build_rootfs
from vmlab.guest.ssh import lab_key
from vmlab.host import HostFacts, NestedHost, pick_accel, scratch_root
from vmlab.launch.qemu import new_guest_dir, sweep_stale
from vmlab.metrics import BASELINE_ID
from vmlab.nested import inner
from vmlab.nested.boot import booted_l1
from vmlab.nested.payload import make_nvme, make_payload, make_scratch
from vmlab.nested.plan import L1Plan, inner_spec, l1_plans
from vmlab.plan import Case
from vmlab.plan import plan as plan_cases
from vmlab.results.index import index_run_in
from vmlab.results.rundir import RunDir, now_iso, run_dirs
from vmlab.spdk.find import find_spdk
from vmlab.spec import BenchSpec

log = logging.getLogger(__name__)

# TCG inside a TCG L1 is many times slower than TCG on the host: the inner bench's deadlines.
INNER_TIMEOUT_SCALE = {"kvm": 2.0, "tcg": 6.0}
INNER_BENCH_TIMEOUT_S = 3600.0  # per case, before the scale
STOP_GRACE_S = 60.0  # Ctrl-C: how long the inner bench may take to stop its guest and record it
INNER_TAR = "inner-results.tar"  # in hosts/<label>/l1/: the inner run as it left L1


class NestedBench:
    def __init__(
        self,
        spec_text: str,
        cases: Sequence[Case],
        plans: Sequence[L1Plan],
        *,
        facts: HostFacts,
        image: GuestImage,
        options: BenchOptions,
        events: BenchEvents,
        run: RunDir,
        resumed: bool = False,
    ) -> None:
        self.spec_text = spec_text
        self.resumed = resumed
        self.cases = {c.id: c for c in cases}
        self.plans = plans
        self.facts = facts
        self.image = image
        self.options = options
        self.events = events
        self.run_dir = run
        self.accel = pick_accel(facts, options.accel or "auto")
        self.outcome = BenchOutcome(run=run, cases=list(cases))
        self.hosts: list[NestedHost] = []

    def stage(self, plan: L1Plan, what: str) -> None:
        self.events.stage(self.cases[plan.case_ids[0]], f"L1 {plan.label}: {what}")

    def run(self) -> BenchOutcome:
        """Every L1 in turn; the run's final status, its host facts with each L1's, and the
        index, on every path."""
        status = "failed"
        try:
            self.run_all()
            status = "complete" if self.outcome.ok else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.run_dir.replace_host_facts(
                self.facts.model_copy(update={"nested": self.hosts}).model_dump(mode="json")
            )
            self.run_dir.set_status(
                status, finished=now_iso(), cases=list(self.cases), failed=self.outcome.failed
            )
            index_run_in(self.options.results_root, self.run_dir.path)
        return self.outcome

    def run_all(self) -> None:
        total = len(self.cases)
        for plan in self.plans:
            if self.resumed and all(self._done(cid) for cid in plan.case_ids):
                self._skip(plan)
                continue
            try:
                self._one(plan)
            except VmlabError as exc:
                log.warning("L1 %s failed: %s", plan.label, exc)
                for cid in plan.case_ids:
                    if cid not in self.outcome.failed and not self._done(cid):
                        self._fail(
                            cid,
                            f"L1 {plan.label}: {exc.message} (L1's logs are kept in "
                            f"{self.run_dir.path}/hosts/{plan.label}/l1/)",
                        )
            for cid in plan.case_ids:
                index = list(self.cases).index(cid) + 1
                self.events.case_started(self.cases[cid], index, total)
                self._report(cid)

    def _done(self, cid: str) -> bool:
        return self.run_dir.case(cid).status().get("status") == "ok"

    def _skip(self, plan: L1Plan) -> None:
        """A resumed run's L1 whose cases all finished before: its stored results, its facts."""
        earlier = self.run_dir.read_optional_json("host.json") or {}
        for host in earlier.get("nested") or []:
            if isinstance(host, dict) and host.get("label") == plan.label:
                self.hosts.append(NestedHost.model_validate(host))
        for cid in plan.case_ids:
            self.events.case_finished(self.cases[cid], "skipped", "finished in an earlier run")
            for job, rep, metrics in self.run_dir.case(cid).stored_metrics():
                self.outcome.results.append(JobOutcome(cid, job, rep, metrics))

    def _earlier(self, plan: L1Plan) -> bytes | None:
        """A resumed run: the inner results the latest attempt of this L1 brought back (an
        attempt that brought none, such as one whose L1 did not boot, leaves the one before
        it), after moving that attempt's files to ``attempts/hosts/<label>.<n>``."""
        if not self.resumed:
            return None
        hosts, attempts = self.run_dir.path / "hosts", self.run_dir.path / "attempts" / "hosts"
        kept = hosts / plan.label
        if kept.is_dir():
            attempts.mkdir(parents=True, exist_ok=True)
            n = 1 + sum(1 for p in attempts.glob(f"{plan.label}.*") if p.is_dir())
            kept.rename(attempts / f"{plan.label}.{n}")
            if (hosts / f"{plan.label}.json").is_file():
                (hosts / f"{plan.label}.json").rename(attempts / f"{plan.label}.{n}.json")
        tars = sorted(
            attempts.glob(f"{plan.label}.*/l1/{INNER_TAR}"),
            key=lambda t: int(t.parent.parent.name.rsplit(".", 1)[1]),
        )
        return tars[-1].read_bytes() if tars else None

    def _fail(self, cid: str, error: str) -> None:
        self.outcome.failed[cid] = error
        case_dir = self.run_dir.case(cid)
        case_dir.path.mkdir(parents=True, exist_ok=True)
        if case_dir.status().get("status") != "failed":
            case_dir.set_status("failed", error=error)

    def _report(self, cid: str) -> None:
        case, case_dir = self.cases[cid], self.run_dir.case(cid)
        if cid in self.outcome.failed:
            self.events.case_finished(case, "failed", self.outcome.failed[cid])
            return
        for job, rep, metrics in case_dir.stored_metrics():
            self.outcome.results.append(JobOutcome(cid, job, rep, metrics))
            self.events.job_finished(case, job, rep, metrics)
        self.events.case_finished(case, "ok", None)

    def _one(self, plan: L1Plan) -> None:
        earlier = self._earlier(plan)
        self.stage(plan, f"image: {plan.hypervisor.kernel} + {', '.join(plan.packages)}")
        l1_image = build_rootfs(
            systemd=False,
            cloud_init=False,
            extra_packages=plan.packages,
            kernel_package=plan.hypervisor.kernel,
            progress=lambda m: self.stage(plan, f"image: {m}"),
        )
        scratch_root().mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"l1-{plan.label}-", dir=scratch_root()))
        logs = workdir / "l1"
        logs.mkdir()
        (logs / "plan.json").write_text(
            json.dumps({**plan.describe(), "image": l1_image.key}, indent=2) + "\n"
        )
        guest_dir = new_guest_dir()
        back = workdir / "back"
        spdk = self._spdk_prefix() if plan.spdk else None
        try:
            self.stage(plan, "payload: this vmlab, its libraries, the L2 image")
            payload = make_payload(
                workdir,
                l2=self.image,
                spec_text=self.spec_text,
                plan_json=json.dumps(plan.describe()),
                spdk=spdk,
            )
            scratch = make_scratch(workdir)
            nvme = make_nvme(workdir, plan.hypervisor.nvme)
            self.stage(plan, f"booting {l1_image.kernel_version} under {self.accel}")
            try:
                with booted_l1(
                    l1_image,
                    plan.hypervisor,
                    accel=self.accel,
                    log_dir=logs,
                    disk_dir=workdir,
                    guest_dir=guest_dir,
                    payload=payload,
                    scratch=scratch,
                    nvme=nvme,
                    key=lab_key(self.options.lab_key_path),
                    timeout_scale=self.options.timeout_scale,
                ) as l1:
                    self._inside(
                        plan, l1, back, logs, spdk=str(spdk) if spdk else None, earlier=earlier
                    )
            except KeyboardInterrupt:
                self._adopt_what_came(plan, l1_image.key, back, logs, interrupted=True)
                raise
            except VmlabError:  # L1 died or timed out: the cases it finished still count
                self._adopt_what_came(plan, l1_image.key, back, logs, interrupted=False)
                raise
            self._adopt(plan, l1_image.key, back, logs)
        finally:
            if logs.is_dir():  # L1 never came back with a run: keep its logs anyway
                keep = workdir / "keep"
                keep.mkdir()
                shutil.move(str(logs), str(keep / "l1"))
                self.run_dir.keep_host_files(plan.label, keep)
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(guest_dir, ignore_errors=True)

    @staticmethod
    def _spdk_prefix() -> Path:
        """The install prefix of the SPDK build this host uses (``<prefix>/bin/vhost``)."""
        found = find_spdk()
        prefix = found.vhost.resolve().parent.parent if found is not None else None
        if prefix is None or not (prefix / "lib").is_dir():
            raise VmlabError(
                "a case inside L1 has target spdk, but this host has no SPDK build to carry "
                f"into it{f' ({found.vhost} has no ../lib)' if found else ''}",
                hint="build it: ../shared/tools/build-spdk (or set VMLAB_SPDK to its prefix)",
            )
        return prefix

    def _inside(
        self,
        plan: L1Plan,
        l1: Any,
        back: Path,
        logs: Path,
        *,
        spdk: str | None,
        earlier: bytes | None,
    ) -> None:
        ssh = l1.ssh
        lio = any(
            d.served_by == "lio" for c in plan.case_ids for d in self.cases[c].variant.guest.disks
        )
        ssh.run(
            inner.mount_script(plan.modules, configfs=lio, spdk=spdk),
            timeout_s=inner.COMMAND_TIMEOUT_S,
        )
        if plan.libvirt:
            self.stage(plan, "starting virtlogd and libvirtd")
            ssh.run(inner.libvirt_script(), timeout_s=inner.LIBVIRT_WAIT_S + 60)
        self.stage(plan, f"up ({inner.l1_uname(ssh)}); running {len(plan.case_ids)} case(s)")
        scale = INNER_TIMEOUT_SCALE[self.accel] * self.options.timeout_scale
        resume = _inner_run_id(earlier) if earlier is not None else None
        if earlier is not None and resume is not None:
            inner.send_results(ssh, earlier)
            self.stage(plan, f"resuming the inner run {resume}")
        ssh.run(
            inner.bench_command(
                timeout_scale=scale, l2_key=self.image.key, spdk=spdk, resume=resume
            ),
            timeout_s=inner.COMMAND_TIMEOUT_S,
        )
        by_inner = {v: k for k, v in plan.inner_ids.items()}
        first = self.cases[plan.case_ids[0]]

        def line(inner_case: str | None, text: str) -> None:
            case = self.cases.get(by_inner.get(inner_case or "", ""), first)
            log.info("L1 %s: %s", plan.label, text)
            self.events.stage(case, f"L1 {plan.label}: {text.strip()}")

        try:
            rc = inner.follow_bench(
                ssh,
                timeout_s=INNER_BENCH_TIMEOUT_S * scale * len(plan.case_ids),
                line=line,
                alive=lambda: l1.vm._check_running("running the bench inside L1"),
            )
            log.info("the bench inside L1 %s exited with %d", plan.label, rc)
        except KeyboardInterrupt:
            self.stage(plan, "interrupted: stopping the bench inside L1")
            grace = STOP_GRACE_S * self.options.timeout_scale
            try:  # let it record its interrupted case and stop its guest
                if inner.stop_bench(ssh, grace_s=grace) is None:
                    log.warning(
                        "the bench inside L1 %s did not stop within %.0f s: what it wrote so "
                        "far comes back as it is",
                        plan.label,
                        grace,
                    )
            except VmlabError as exc:
                log.warning("could not stop the bench inside L1 %s: %s", plan.label, exc)
            raise
        finally:
            try:  # what the inner run has, also when it failed or was cut short
                tar = inner.fetch_results(ssh, back)
                (logs / INNER_TAR).write_bytes(tar)
            except VmlabError as exc:
                log.warning("could not fetch the inner run from L1 %s: %s", plan.label, exc)

    def _baseline_id(self, plan: L1Plan) -> str:
        """The host baseline of ``plan``'s L1 in the run: ``host-baseline`` with one L1, else
        ``<hypervisor labels>_host-baseline``, the prefix of that L1's case ids, so each case's
        limit is its own L1's (vmlab.metrics.limit_cases)."""
        if len(self.plans) == 1:
            return BASELINE_ID
        params = self.cases[plan.case_ids[0]].params
        prefix = "_".join(v for k, v in params.items() if k.startswith("hypervisor"))
        return f"{prefix or plan.label}_{BASELINE_ID}"

    def _adopt_what_came(
        self, plan: L1Plan, image_key: str, back: Path, logs: Path, *, interrupted: bool
    ) -> None:
        """Ctrl-C or a failed L1: keep what the inner run finished, never hiding why it
        ended."""
        if not (back / "results").is_dir():
            return  # it ended before the inner bench ran: only L1's logs to keep
        try:
            self._adopt(plan, image_key, back, logs, interrupted=interrupted)
        except (VmlabError, OSError) as exc:
            log.warning("L1 %s: what came back was not kept: %s", plan.label, exc)

    def _adopt(
        self, plan: L1Plan, image_key: str, back: Path, logs: Path, *, interrupted: bool = False
    ) -> None:
        if (back / "bench.log").is_file():
            shutil.move(str(back / "bench.log"), str(logs / "bench.log"))
        runs = run_dirs(back / "results") if (back / "results").is_dir() else []
        if not runs:
            tail = (
                (logs / "bench.log").read_text(errors="replace")[-2000:]
                if (logs / "bench.log").is_file()
                else ""
            )
            raise VmlabError(
                f"the bench inside L1 {plan.label} left no run directory",
                hint=f"its output ends with: {tail.strip()[-500:]}",
            )
        inner_run = RunDir.open(runs[-1])
        baseline = inner_run.case(BASELINE_ID)
        if baseline.exists():  # L1's own limit, fio on L1 against the same backing stores
            bid = self._baseline_id(plan)
            self.run_dir.archive_case(bid)
            self.run_dir.adopt_case(baseline, bid, host=plan.label)
            for job, rep, metrics in self.run_dir.case(bid).stored_metrics():
                self.outcome.results.append(JobOutcome(bid, job, rep, metrics))
        for cid in plan.case_ids:
            source = inner_run.case(plan.inner_ids[cid])
            if source.exists():
                self.run_dir.archive_case(cid)  # a resumed run: the earlier attempt's copy
                self.run_dir.adopt_case(source, cid, host=plan.label)
            if self._done(cid):
                continue
            case_dir = self.run_dir.case(cid)
            status = case_dir.status() if case_dir.exists() else {}
            if interrupted:  # --resume finishes it
                case_dir.path.mkdir(parents=True, exist_ok=True)
                if status.get("status") != "interrupted":
                    case_dir.set_status("interrupted")
                continue
            self._fail(cid, str(status.get("error") or "the case did not finish inside L1"))
        l1_facts = inner_run.read_json("host.json")
        self.hosts.append(
            NestedHost(
                label=plan.label,
                kernel_package=plan.hypervisor.kernel,
                kernel=str(l1_facts.get("kernel", "")),
                image_key=image_key,
                accel=self.accel,
                accel_reason=self.facts.accel_reason,
                l2_accel=l1_facts.get("accel"),
                vhost_net=bool(l1_facts.get("vhost_net")),
                kernel_modules=dict(l1_facts.get("kernel_modules") or {}),
            )
        )
        self.run_dir.adopt_host(inner_run, plan.label, extra=[logs])


def run_nested_bench(
    spec: BenchSpec,
    *,
    facts: HostFacts,
    image: GuestImage,
    options: BenchOptions,
    events: BenchEvents | None = None,
    resume: RunDir | None = None,
) -> BenchOutcome:
    """``vmlab bench`` of a spec whose cases are nested: plan, one run directory, each L1
    (same signature as :func:`vmlab.bench.run_bench`). ``resume``: an earlier nested run of
    the same spec, whose unfinished cases run again (see the module's docstring)."""
    sweep_stale()
    cases = plan_cases(spec)
    plans = l1_plans(spec, cases)
    spec_text = inner_spec(spec)
    if resume is None:
        run = new_run(spec, facts, image, options.results_root)
        run.write_json("nested.json", {"plans": [p.describe() for p in plans]})
    else:
        run = resume
        stored = run.read_optional_json("nested.json") or {}
        if stored.get("plans") != [p.describe() for p in plans]:
            raise VmlabError(
                f"{run.path}: the run's L1 plans (nested.json) are not the ones this vmlab "
                "makes of its spec",
                hint="resume it with the vmlab that started it, or run the spec again",
            )
    run.set_status("running", started=now_iso(), cases=[c.id for c in cases])
    bench = NestedBench(
        spec_text,
        cases,
        plans,
        facts=facts,
        image=image,
        options=options,
        events=events or QuietEvents(),
        run=run,
        resumed=resume is not None,
    )
    return bench.run()


def _inner_run_id(tar: bytes) -> str | None:
    """The id of the run directory in an inner results tar (``results/<id>/spec.json``)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        ids = {
            parts[1]
            for name in archive.getnames()
            if len(parts := name.split("/")) >= 3
            and parts[0] == "results"
            and parts[2] == "spec.json"
        }
    return sorted(ids)[-1] if ids else None
