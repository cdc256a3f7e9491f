"""`vmlab fleet run`: one spec on every host of an Ansible inventory, merged into one run.

The work on the hosts is ``playbooks/bench.yml`` (copy the spec, ``vmlab bench --ci``, fetch
the run directory back); this module only drives it through ``ansible_runner``, turns runner
events into per-host progress, and merges what came back (:mod:`vmlab.fleet.merge`).

The merged run directory is created first, so everything lands inside it as it happens:
ansible-runner's artifacts (events, stdout) under ``ansible/``, the fetched run directories
under ``.fetch/`` until they are merged. A host that fails (unreachable, ``vmlab bench`` exits
non-zero, the fetch fails) is recorded with its error and does not stop the others.

Which ansible.cfg: ``$ANSIBLE_CONFIG`` if set, else ``./ansible.cfg`` of the directory vmlab
was started in, else the one beside the playbooks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sys
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vmlab.errors import CommandError, HostError, VmlabError
from vmlab.fleet.events import (
    EventCollector,
    FleetEvents,
    QuietFleetEvents,
)
from vmlab.fleet.merge import MergedHost, merge_fleet
from vmlab.resources import playbooks_dir
from vmlab.results.index import index_run_in
from vmlab.results.rundir import RunDir, now_iso
from vmlab.spec import load_spec
from vmlab.tarball import extract_data

log = logging.getLogger(__name__)

RUNNER_IDENT = "bench"
DEFAULT_HOST_TIMEOUT_S = 6 * 3600
RUNNER_SLACK_S = 900
"""The whole ansible run may take this much longer than one host's `vmlab bench` (copying the
spec, fetching results)."""
CANCEL_TIMEOUT_S = 60.0
POLL_S = 0.2
"""The task of bench.yml whose result holds vmlab's output (bench.log)."""
ARCHIVE = "results.tar.gz"
NO_HOSTS = "leaves us with no hosts to target"
"""What ansible-playbook says when the inventory and --limit select no host."""


@dataclass(frozen=True)
class FleetOptions:
    inventory: Path
    spec: Path
    results_root: Path = Path("results")
    limit: str | None = None
    forks: int | None = None
    bench_args: Sequence[str] = ()
    """More `vmlab bench` options for every host (:func:`bench_args`: --yes, --runtime, ...)."""
    max_cases: int | None = None
    """Refuse, before Ansible starts, a matrix of more cases (None: only vmlab's MAX_CASES);
    the hosts are not asked again (bench_args passes them --yes)."""
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    host_timeout_s: int = DEFAULT_HOST_TIMEOUT_S
    """A host's `vmlab bench` is stopped and the host failed after this long (sets
    vmlab_bench_timeout_s); the whole ansible run gets RUNNER_SLACK_S more."""
    playbook: Path | None = None
    """Default: bench.yml shipped with vmlab."""


@dataclass(frozen=True)
class FleetOutcome:
    run: RunDir
    hosts: tuple[MergedHost, ...]
    ansible_status: str
    ansible_rc: int | None

    @property
    def failed(self) -> tuple[MergedHost, ...]:
        return tuple(h for h in self.hosts if not h.ok)

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and not self.failed


# --------------------------------------------------------------------------------------------
# Running the playbook


def _require_runner() -> Any:
    try:
        import ansible_runner
    except ImportError as exc:
        raise HostError(
            "ansible-runner is not installed",
            hint="pip install 'vmlab[fleet]' (ansible-core and ansible-runner)",
        ) from exc
    return ansible_runner


def _ansible_env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    env = {
        "PATH": f"{bindir}{os.pathsep}{path}" if path else bindir,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    if not os.environ.get("ANSIBLE_CONFIG"):
        local = Path.cwd() / "ansible.cfg"
        shipped = playbooks_dir() / "ansible.cfg"
        env["ANSIBLE_CONFIG"] = str(local if local.is_file() else shipped)
    if shutil.which("ansible-playbook", path=env["PATH"]) is None:
        raise HostError(
            "ansible-playbook is not installed",
            hint="pip install 'vmlab[fleet]' into the environment vmlab runs from",
        )
    return env


_SECRET = re.compile(r"pass|secret|token|vault|credential", re.IGNORECASE)


def redact(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Variables to record: values of names that look secret are replaced."""
    return {k: "<redacted>" if _SECRET.search(k) else v for k, v in variables.items()}


def _scrub_command_artifact(artifact_dir: Path) -> None:
    """ansible-runner saves its whole environment and the extra variables in `command`; keep
    only the environment's names and redact secret-looking variables (results get shared)."""
    path = artifact_dir / "command"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    if isinstance(data.get("env"), dict):
        data["env"] = sorted(data["env"])
    argv = data.get("command")
    if isinstance(argv, list):
        for i, arg in enumerate(argv[:-1]):
            if arg == "-e" and isinstance(argv[i + 1], str):
                try:
                    given = json.loads(argv[i + 1])
                except ValueError:
                    continue
                if isinstance(given, dict):
                    argv[i + 1] = json.dumps(redact(given))
    path.write_text(json.dumps(data, indent=2) + "\n")


def _run_playbook(
    runner: Any,
    *,
    private_data_dir: Path,
    playbook: Path,
    options: FleetOptions,
    extravars: Mapping[str, Any],
    envvars: Mapping[str, str],
    collector: EventCollector,
) -> tuple[str, int | None, bool]:
    """Run the playbook to its end; returns (runner status, rc, interrupted).

    On Ctrl-C the runner is cancelled (it kills ansible-playbook) before this returns.
    """
    cancel = threading.Event()
    kwargs: dict[str, Any] = {
        "private_data_dir": str(private_data_dir),
        "ident": RUNNER_IDENT,
        "playbook": str(playbook),
        "inventory": str(options.inventory.resolve()),
        "extravars": dict(extravars),
        "envvars": dict(envvars),
        "quiet": True,
        "suppress_env_files": True,
        "event_handler": collector,
        "cancel_callback": cancel.is_set,
        "timeout": options.host_timeout_s + RUNNER_SLACK_S,
    }
    if options.limit:
        kwargs["limit"] = options.limit
    if options.forks:
        kwargs["forks"] = options.forks
    private_data_dir.mkdir(parents=True, exist_ok=True)
    try:
        thread, handle = runner.run_async(**kwargs)
    except Exception as exc:  # ansible-runner raises ValueError, ConfigurationError...
        raise VmlabError(
            f"ansible-runner could not start the playbook: {exc}",
            hint="check the inventory path and that ansible-core is installed",
        ) from exc
    interrupted = False
    try:
        while thread.is_alive():
            thread.join(timeout=POLL_S)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: cancelling ansible-playbook")
        cancel.set()
        thread.join(timeout=CANCEL_TIMEOUT_S)
        if thread.is_alive():
            log.warning("ansible-runner did not stop within %.0f s", CANCEL_TIMEOUT_S)
    status = str(getattr(handle, "status", "unknown"))
    rc = getattr(handle, "rc", None)
    return status, rc if isinstance(rc, int) else None, interrupted


def _stdout_tail(artifact_dir: Path, lines: int = 20) -> str:
    try:
        text = (artifact_dir / "stdout").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_fleet(options: FleetOptions, events: FleetEvents | None = None) -> FleetOutcome:
    """Run the spec on every host (see the module docstring). Raises SpecError for a bad
    spec, HostError when Ansible is missing, VmlabError when no host matched; a host's failure
    is in the outcome, not raised. KeyboardInterrupt is re-raised after the hosts' results
    that came back are merged."""
    spec = load_spec(options.spec, max_cases=options.max_cases)
    if not options.inventory.exists():
        raise VmlabError(
            f"no inventory at {options.inventory}",
            hint="pass an Ansible inventory file (see playbooks/inventory.example.yml)",
        )
    runner = _require_runner()
    envvars = _ansible_env()
    playbook = (options.playbook or playbooks_dir() / "bench.yml").resolve()
    run = RunDir.create(options.results_root, f"fleet-{spec.name}")
    started = now_iso()
    run.set_status("running", started=started)
    private = run.path / "ansible"
    fetch_dir = run.path / ".fetch"
    fetch_dir.mkdir()
    run_tag = f"{run.run_id}-{secrets.token_hex(3)}"
    extravars = {
        **dict(options.extra_vars),
        "vmlab_spec": str(options.spec.resolve()),
        "vmlab_fetch_dir": str(fetch_dir.resolve()),
        "vmlab_run_tag": run_tag,
        "vmlab_bench_extra_args": list(options.bench_args),
        "vmlab_bench_timeout_s": options.host_timeout_s,
        "vmlab_fetch_unpack": False,  # done here: _unpack_fetched
    }
    collector = EventCollector(events or QuietFleetEvents())
    status, rc, interrupted = "unknown", None, False
    try:
        begun = time.monotonic()
        try:
            status, rc, interrupted = _run_playbook(
                runner,
                private_data_dir=private,
                playbook=playbook,
                options=options,
                extravars=extravars,
                envvars=envvars,
                collector=collector,
            )
        except VmlabError:  # the playbook never started: nothing to keep
            shutil.rmtree(run.path, ignore_errors=True)
            raise
        log.info("ansible-playbook: %s (rc %s) in %.1f s", status, rc, time.monotonic() - begun)
        artifacts = private / "artifacts" / RUNNER_IDENT
        _scrub_command_artifact(artifacts)
        outcomes = collector.outcomes()
        _unpack_fetched(fetch_dir, [o.host for o in outcomes], collector)
        if interrupted:  # hosts still busy when Ctrl-C came: not failed, stopped
            outcomes = [
                replace(o, status="interrupted", error="interrupted (Ctrl-C on the controller)")
                if o.status == "ok"
                else o
                for o in outcomes
            ]
        if not outcomes and not interrupted:
            tail = _stdout_tail(artifacts)
            shutil.rmtree(run.path, ignore_errors=True)
            if collector.no_hosts_matched or rc == 0 or NO_HOSTS in tail:
                raise VmlabError(
                    f"no host of {options.inventory} matches"
                    + (f" --limit {options.limit}" if options.limit else ""),
                    hint="`ansible-inventory -i INVENTORY --graph` lists the hosts",
                )
            raise CommandError(
                f"ansible-playbook failed before reaching any host ({status})",
                argv=["ansible-playbook", "-i", str(options.inventory), str(playbook)],
                returncode=rc,
                output=tail,
                hint="check the inventory and ansible.cfg",
            )
        merged = merge_fleet(
            run,
            fetch_dir,
            outcomes,
            fallback_spec=spec.model_dump(mode="json", exclude={"source"}),
            fallback_spec_yaml=spec.source or "# see spec.json\n",
            meta={
                "inventory": str(options.inventory.resolve()),
                "spec": str(options.spec.resolve()),
                "limit": options.limit,
                "forks": options.forks,
                "playbook": str(playbook),
                "run_tag": run_tag,
                "bench_args": list(options.bench_args),
                "extra_vars": redact(
                    {k: v for k, v in extravars.items() if k != "vmlab_fetch_dir"}
                ),
                "started": started,
                "finished": now_iso(),
                "ansible": {
                    "status": status,
                    "rc": rc,
                    "artifacts": str(artifacts.relative_to(run.path)),
                },
            },
            interrupted=interrupted,
        )
    finally:
        shutil.rmtree(fetch_dir, ignore_errors=True)
    index_run_in(options.results_root, run.path)
    if interrupted:
        raise KeyboardInterrupt
    return FleetOutcome(run=run, hosts=merged.hosts, ansible_status=status, ansible_rc=rc)


def _unpack_fetched(fetch_dir: Path, hosts: Sequence[str], collector: EventCollector) -> None:
    """What bench.yml leaves to vmlab (``vmlab_fetch_unpack: false``): each host's fetched
    archive unpacked beside it, and its bench.log written from the runner's events. Four
    module runs less per host on the controller, which shares its CPU with the hosts' guests
    when they run on it."""
    for host in hosts:
        host_dir = fetch_dir / host
        archive = host_dir / ARCHIVE
        if archive.is_file():
            try:
                with tarfile.open(archive) as tar:
                    extract_data(tar, host_dir)
            except (OSError, tarfile.TarError) as exc:
                log.warning("%s: cannot unpack %s: %s", host, archive, exc)
            else:
                archive.unlink()
        output = collector.bench_output(host)
        if output is not None and not (host_dir / "bench.log").exists():
            host_dir.mkdir(parents=True, exist_ok=True)
            (host_dir / "bench.log").write_text(output)


def parse_extra_vars(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> variables; VALUE is read as YAML (``[a, b]``, ``{k: v}``, 3)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise VmlabError(
                f"bad extra variable {pair!r}",
                hint="write KEY=VALUE, e.g. -e vmlab_bin=/opt/vmlab/venv/bin/vmlab",
            )
        try:
            out[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def bench_args(
    *, runtime_s: int | None, timeout_scale: float | None, accel: str | None
) -> list[str]:
    """The `vmlab bench` options `vmlab fleet run` passes through to every host. Always
    --yes: the hosts run unattended, and the matrix size was checked here (max_cases)."""
    args: list[str] = ["--yes"]
    if runtime_s is not None:
        args += ["--runtime", str(runtime_s)]
    if timeout_scale is not None:
        args += ["--timeout-scale", f"{timeout_scale:g}"]
    if accel is not None:
        args += ["--accel", accel]
    return args
