"""ansible-runner's events as per-host progress: what each host is doing, and why a host
failed (:mod:`vmlab.fleet.run` drives the playbook and feeds them in)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from vmlab.fleet.merge import HostOutcome

log = logging.getLogger(__name__)

ERROR_LINES = 12
BENCH_TASK = "Run vmlab bench"

State = Literal["running", "ok", "changed", "skipped", "failed", "unreachable", "done"]


@dataclass(frozen=True)
class HostUpdate:
    """One step of one host, as a front end shows it."""

    host: str
    task: str
    state: State
    detail: str | None = None


class FleetEvents(Protocol):
    def host_update(self, update: HostUpdate) -> None: ...


class QuietFleetEvents:
    def host_update(self, update: HostUpdate) -> None:
        log.info("%s: %s %s %s", update.host, update.task, update.state, update.detail or "")


def describe_failure(task: str, res: Mapping[str, Any]) -> str:
    """One readable error from a task result: its message, exit code, the tail of stderr."""
    msg = str(res.get("msg") or "").strip()
    text = f"{task}: {msg or 'failed'}"
    rc = res.get("rc")
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0 and "exit" not in msg:
        text += f" (exit {rc})"
    stderr = str(res.get("stderr") or res.get("module_stderr") or "").strip()
    if stderr:
        text += "\n" + "\n".join(stderr.splitlines()[-ERROR_LINES:])
    return text


@dataclass
class _HostState:
    first_seen: int
    problem: Literal["failed", "unreachable"] | None = None
    error: str | None = None
    failed_task: str | None = None


class EventCollector:
    """ansible-runner's event_handler: keeps each host's first failure and forwards progress.

    Called from the runner's thread; everything it keeps is behind a lock.
    """

    def __init__(self, events: FleetEvents) -> None:
        self.events = events
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}
        self._stats: dict[str, dict[str, int]] = {}
        self._output: dict[str, str] = {}
        self.no_hosts_matched = False

    def __call__(self, event: Mapping[str, Any]) -> bool:
        try:
            self._handle(event)
        except Exception:  # a display problem must never stop the run
            log.exception("could not handle ansible event %s", event.get("event"))
        return True  # keep every event in the artifacts

    def _seen(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState(first_seen=len(self._hosts))
        return state

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("event", ""))
        data = event.get("event_data")
        data = data if isinstance(data, Mapping) else {}
        if kind == "playbook_on_no_hosts_matched":
            self.no_hosts_matched = True
            return
        if kind == "playbook_on_stats":
            with self._lock:
                for key in ("ok", "dark", "failures", "skipped", "changed", "processed"):
                    counts = data.get(key)
                    if isinstance(counts, Mapping):
                        self._stats[key] = {str(h): int(n) for h, n in counts.items()}
            return
        host = data.get("host")
        if not host or not kind.startswith("runner_on_"):
            return
        host, task = str(host), str(data.get("task", "")).strip()
        res = data.get("res")
        res = res if isinstance(res, Mapping) else {}
        update: HostUpdate | None = None
        with self._lock:
            state = self._seen(host)
            if task == BENCH_TASK and kind in ("runner_on_ok", "runner_on_failed"):
                self._output[host] = f"{res.get('stdout') or ''}\n{res.get('stderr') or ''}\n"
            if kind == "runner_on_start":
                update = HostUpdate(host, task, "running")
            elif kind == "runner_on_ok":
                update = HostUpdate(host, task, "changed" if res.get("changed") else "ok")
            elif kind == "runner_on_skipped":
                update = HostUpdate(host, task, "skipped")
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                error = describe_failure(task, res)
                if state.problem is None:
                    state.problem, state.error, state.failed_task = "failed", error, task
                update = HostUpdate(host, task, "failed", error)
            elif kind == "runner_on_unreachable":
                error = f"unreachable during {task!r}: {str(res.get('msg') or '').strip()}"
                if state.problem is None:
                    state.problem, state.error, state.failed_task = "unreachable", error, task
                update = HostUpdate(host, task, "unreachable", error)
        if update is not None:
            self.events.host_update(update)

    def bench_output(self, host: str) -> str | None:
        """What `vmlab bench` printed on the host (stdout, then stderr), if it ran."""
        with self._lock:
            return self._output.get(host)

    def outcomes(self) -> list[HostOutcome]:
        """Every host the play touched, in the order they first appeared."""
        with self._lock:
            for host in self._stats.get("processed", {}):
                self._seen(host)
            dark = self._stats.get("dark", {})
            failures = self._stats.get("failures", {})
            out = []
            for host, state in sorted(self._hosts.items(), key=lambda kv: kv[1].first_seen):
                if state.problem is not None:
                    out.append(HostOutcome(host, state.problem, state.error, state.failed_task))
                elif dark.get(host):
                    out.append(HostOutcome(host, "unreachable", "unreachable (no detail)"))
                elif failures.get(host):
                    out.append(HostOutcome(host, "failed", "a task failed (no detail)"))
                else:
                    out.append(HostOutcome(host, "ok"))
            return out
