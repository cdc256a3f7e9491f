"""Run a bench: plan the cases, run each once (vmlab.bench.case), store everything.

A failing case is recorded and the bench moves on; an interrupt stops the bench, marks the run
`interrupted`, and keeps every case that finished. One run uses one accelerator for every case
that leaves it to vmlab: if KVM fails under a real guest, the run switches to TCG and measures
every case again (see :meth:`Bench._switch_to_tcg`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmlab import __version__
from vmlab.accel import cache_key, remember
from vmlab.bench.baseline import baseline_case, run_baseline
from vmlab.bench.case import CaseEnv, measure_case
from vmlab.bench.events import BenchEvents, QuietEvents
from vmlab.bench.outcome import BenchOptions, BenchOutcome, JobOutcome
from vmlab.bench.workloads import JobContext, Repetitions
from vmlab.errors import AccelError, HostError, VmlabError
from vmlab.guest.image import GuestImage
from vmlab.guest.ssh import lab_key
from vmlab.host import AccelSwitch, HostFacts, pick_accel, require_qemu
from vmlab.hugepages import reserved
from vmlab.launch.base import Launcher
from vmlab.launch.direct import QemuLauncher
from vmlab.launch.libvirt import LibvirtLauncher
from vmlab.launch.qemu import sweep_stale
from vmlab.metrics import BASELINE_ID
from vmlab.net.netns import sweep_stale as sweep_stale_netns
from vmlab.plan import Case, plan
from vmlab.preflight import check_plan, hugepages_needed, plan_problems
from vmlab.results.index import index_run_in
from vmlab.results.rundir import CaseDir, RunDir, now_iso
from vmlab.spdk.targets import SpdkTargets
from vmlab.spec import BenchSpec
from vmlab.storage.backing import RunBacking, run_backing
from vmlab.vfio import default_state_file, recover_stale

log = logging.getLogger(__name__)


def case_done(case_dir: CaseDir, accel: str | None = None) -> bool:
    """The case finished in an earlier attempt, under ``accel`` when one is given (a run never
    mixes accelerators: a case done under KVM runs again once the run has switched to TCG)."""
    status = case_dir.status()
    return status.get("status") == "ok" and (accel is None or status.get("accel", accel) == accel)


def stored(case: Case, case_dir: CaseDir) -> list[JobOutcome]:
    return [JobOutcome(case.id, job, rep, m) for job, rep, m in case_dir.stored_metrics()]


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
        # The accelerator of every case that leaves it to vmlab (accel: auto): the probe's
        # verdict, until a real guest shows KVM failing; then TCG for the whole run.
        self.accel = facts.accel
        self.launchers: dict[str, Launcher] = {
            "qemu": QemuLauncher(require_qemu(facts)),
            "libvirt": LibvirtLauncher(options.libvirt_uri),
        }

    def repetitions(self, case: Case, cases: Sequence[Case]) -> Repetitions:
        """The spec's rule; under ``until: significant`` every case but the first (the
        reference of the table's ratio column) is compared with the first."""
        rule = self.spec.repeat
        compared = rule.until == "significant" and case.id not in (cases[0].id, BASELINE_ID)
        return Repetitions(rule, self.spec.warmup, cases[0].id if compared else None)

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
            # Run-scoped, entered before any guest starts and left when the run ends, on every
            # path: the backing stores, the hugepages the run reserved, its SPDK targets.
            with (
                run_backing(run.run_id, cases) as backing,
                reserved(hugepages_needed(cases, self.facts)),
                SpdkTargets.for_cases(
                    cases, log_dir=run.path / "spdk", default_binary=self.facts.spdk_vhost
                ) as spdk,
            ):
                if self.spec.baseline:
                    self._baseline(run, cases, backing, outcome)
                resumed = resume is not None
                failure = self._run_cases(run, cases, backing, spdk, outcome, resume=resumed)
                if failure is not None:  # KVM failed under a real guest: all again under TCG
                    self._switch_to_tcg(run, failure, outcome)
                    self._run_cases(run, cases, backing, spdk, outcome, resume=True)
            status = "complete" if outcome.ok else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            run.set_status(
                status, finished=now_iso(), cases=[c.id for c in cases], failed=outcome.failed
            )
            index_run_in(self.options.results_root, run.path)  # after the final status
        return outcome

    # -- the cases -------------------------------------------------------------------------

    def _run_cases(
        self,
        run: RunDir,
        cases: Sequence[Case],
        backing: RunBacking,
        spdk: SpdkTargets,
        outcome: BenchOutcome,
        *,
        resume: bool,
    ) -> tuple[Case, AccelError] | None:
        """Every case in turn; stops at the first whose guest KVM failed under, when the run
        may still fall back to TCG (and returns it)."""
        env = CaseEnv(
            spec=self.spec,
            image=self.image,
            key=self.key,
            backing=backing,
            events=self.events,
            qsd=self.facts.qemu_storage_daemon,
            timeout_scale=self.options.timeout_scale,
            spdk=spdk,
        )
        for index, case in enumerate(cases, start=1):
            case_dir = run.case(case.id)
            accel, _ = self._case_accel(case)
            if resume and case_done(case_dir, accel):
                self.events.case_finished(case, "skipped", "finished in an earlier run")
                outcome.results.extend(stored(case, case_dir))
                continue
            self.events.case_started(case, index, len(cases))
            failure = self._run_case(env, run, case, outcome, self.repetitions(case, cases))
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

    def _run_case(
        self,
        env: CaseEnv,
        run: RunDir,
        case: Case,
        outcome: BenchOutcome,
        repetitions: Repetitions,
    ) -> AccelError | None:
        """One case, recorded as ok or failed; returns the KVM failure instead when the case's
        accelerator was vmlab's choice (the run then falls back to TCG)."""
        previous = run.case(case.id).status()
        attempt = run.archive_case(case.id)  # resumed after a failure or interrupt: keep it
        case_dir = run.case(case.id)
        case_dir.write_json(
            "case.json",
            {
                "id": case.id,
                "params": dict(case.params),
                "variant": case.variant.model_dump(mode="json"),
            },
        )
        accel, may_fall_back = self._case_accel(case)
        interrupted = previous.get("status") == "interrupted" and previous.get("accel") == accel
        carried = self._carry(case, case_dir, attempt, outcome) if attempt and interrupted else {}
        case_dir.set_status("running", started=now_iso(), accel=accel, **carried)
        timings: dict[str, float] = {}
        jobs = JobContext(case, case_dir, repetitions, self.events, outcome)
        try:
            self._measure(env, case, case_dir, accel, jobs, timings)
        except AccelError as exc:
            if not may_fall_back:
                self._case_failed(case, case_dir, outcome, exc, timings)
                return None
            outcome.forget(keep={r.case_id for r in outcome.results} - {case.id})
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

    @staticmethod
    def _carry(
        case: Case, case_dir: CaseDir, attempt: Path, outcome: BenchOutcome
    ) -> dict[str, Any]:
        """The repetitions an interrupted attempt (same accelerator) finished count: copied
        into the new case directory and into the outcome. Returns what to record in status."""
        reps = case_dir.carry_repetitions(attempt)
        if not reps:
            return {}
        outcome.results.extend(stored(case, case_dir))
        return {"carried": {"from": attempt.name, "repetitions": reps}}

    def _measure(
        self,
        env: CaseEnv,
        case: Case,
        case_dir: CaseDir,
        accel: str,
        jobs: JobContext,
        timings: dict[str, float],
    ) -> None:
        launcher = self.launchers[self.options.launcher or case.variant.launcher]
        measure_case(
            env, case, case_dir, accel=accel, launcher=launcher, jobs=jobs, timings=timings
        )

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

    def _baseline(
        self, run: RunDir, cases: Sequence[Case], backing: RunBacking, outcome: BenchOutcome
    ) -> None:
        case = baseline_case(cases[0])
        case_dir = run.case(case.id)
        if case_done(case_dir):
            outcome.results.extend(stored(case, case_dir))
            return
        self.events.case_started(case, 0, len(cases))
        jobs = JobContext(case, case_dir, self.repetitions(case, cases), self.events, outcome)
        run_baseline(jobs, backing)

    # -- the accelerator ---------------------------------------------------------------------

    def _resume_accel(self, run: RunDir) -> None:
        """A resumed run keeps the accelerator its finished cases ran under, if it still works
        here; a run that had switched to TCG stays on TCG."""
        try:
            stored_facts = HostFacts.model_validate(run.read_json("host.json"))
        except (VmlabError, ValueError):
            return
        if stored_facts.accel == "tcg" or self.facts.accel == "kvm":
            self.accel = stored_facts.accel
            self.facts = self.facts.model_copy(
                update={
                    "accel": stored_facts.accel,
                    "accel_reason": stored_facts.accel_reason,
                    "accel_switch": stored_facts.accel_switch,
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
        outcome.forget(keep={BASELINE_ID})
        self.events.notice(
            f"KVM failed under the first real guest ({case.id}: {error.detail}). The probe had "
            f"said: {switch.probed_reason}. Every case of this run now runs under TCG, from the "
            "first; the switch is recorded in host.json."
        )

    # -- the run directory -------------------------------------------------------------------

    def _new_run(self) -> RunDir:
        return new_run(self.spec, self.facts, self.image, self.options.results_root)


def new_run(spec: BenchSpec, facts: HostFacts, image: GuestImage, results_root: Path) -> RunDir:
    """A new run directory with what every run records first: the spec as written and as
    validated, the host's facts, the guest image and this vmlab's version."""
    run = RunDir.create(results_root, spec.name)
    run.write_text("spec.yaml", spec.source or "# built from Python, see spec.json\n")
    run.write_json("spec.json", spec.model_dump(mode="json", exclude={"source"}))
    run.write_json("host.json", facts.model_dump(mode="json"))
    run.write_json(
        "image.json",
        {
            "key": image.key,
            "kernel": str(image.kernel),
            "kernel_version": image.kernel_version,
            "fio_version": image.fio_version,
        },
    )
    run.write_json("vmlab.json", {"version": __version__})
    return run


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
