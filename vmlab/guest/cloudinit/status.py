"""Readiness of a cloud guest: ``cloud-init status`` parsed, waited for across reboots, and
the instance-id that proves the guest read this boot's seed."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.errors import GuestError
from vmlab.guest.cloudinit.config import STATUS_JSON_CMD, STATUS_TEXT_CMD
from vmlab.guest.ssh import GuestSSH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudInitStatus:
    status: str  # done | error | running | not run | disabled (| degraded done on 23.4+)
    extended_status: str
    errors: tuple[str, ...]
    detail: str
    raw: str

    @property
    def failed(self) -> bool:
        return (
            self.status in ("error", "disabled")
            or "degraded" in self.extended_status
            or "degraded" in self.status
            or bool(self.errors)
        )

    @property
    def running(self) -> bool:
        return self.status in ("running", "not run", "not started")


def parse_status(text: str) -> CloudInitStatus:
    """Parse ``cloud-init status --long`` output: JSON (``--format json``, cloud-init >= 22.3)
    or the tabular form of older releases."""
    stripped = text.strip()
    start = stripped.find("{")
    if start >= 0:
        try:
            data = json.loads(stripped[start:])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "status" in data:
            status = str(data["status"])
            return CloudInitStatus(
                status=status,
                extended_status=str(data.get("extended_status") or status),
                errors=tuple(str(e) for e in data.get("errors") or ()),
                detail=str(data.get("detail") or data.get("description") or ""),
                raw=text,
            )
    fields: dict[str, str] = {}
    errors: list[str] = []
    in_errors = False
    for raw_line in stripped.splitlines():
        line = raw_line.strip(". ")
        if in_errors and line.startswith("- "):
            errors.append(line[2:])
            continue
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[a-z_ ]+", key):
            in_errors = key == "errors"
            fields[key.strip()] = value.strip()
    if "status" not in fields:
        raise GuestError(
            f"cannot read cloud-init's status from {text.strip()[:300]!r}",
            hint="run `cloud-init status --long` in the guest to see what it prints",
        )
    status = fields["status"]
    return CloudInitStatus(
        status=status,
        extended_status=fields.get("extended_status", status),
        errors=tuple(errors),
        detail=fields.get("detail", ""),
        raw=text,
    )


def _transport_alive(ssh: GuestSSH) -> bool:
    transport = ssh.client.get_transport()
    return transport is not None and transport.is_active()


Reconnect = Callable[[float], GuestSSH]


def _reconnect(ssh: GuestSSH, reconnect: Reconnect | None, remaining_s: float, why: str) -> None:
    """Re-point ``ssh`` at a fresh session (the guest rebooted or dropped the connection)."""
    if reconnect is None:
        raise GuestError(
            f"{ssh.where}: SSH connection dropped while waiting for cloud-init ({why})",
            hint="the guest rebooted during cloud-init; pass reconnect= to wait across reboots",
        )
    log.info("%s: SSH dropped while waiting for cloud-init (%s); reconnecting", ssh.where, why)
    ssh.close()
    fresh = reconnect(max(remaining_s, 1.0))
    ssh.client, ssh.where = fresh.client, fresh.where


def _output_tail(ssh: GuestSSH) -> str:
    try:
        result = ssh.run("tail -n 30 /var/log/cloud-init-output.log", timeout_s=15, check=False)
    except GuestError:
        return ""
    return result.text.strip()


def wait_cloud_init(
    ssh: GuestSSH,
    *,
    timeout_s: float,
    reconnect: Reconnect | None = None,
    console_log: Path | None = None,
) -> dict[str, Any]:
    """Block until cloud-init has finished in the guest; GuestError if it failed or timed out.

    Runs ``cloud-init status --wait --long --format json`` (the tabular form on a cloud-init
    older than 22.3). ``status: error``, a ``degraded`` extended status (cloud-init >= 23.4) or
    any reported error fail, with cloud-init's output and the tail of cloud-init-output.log in
    the message. If the SSH connection drops (the guest rebooted: power_state, a package that
    asks for it), ``reconnect(remaining_s)`` is called for a new session until the deadline, and
    ``ssh`` is re-pointed at it, so the caller's handle stays usable. Returns the status as a
    dict plus ``wait_s`` and ``reconnects``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    command = STATUS_JSON_CMD
    reconnects = 0
    where = f" (console: {console_log})" if console_log is not None else ""
    hint = (
        f"read the guest's console log{where} and /var/log/cloud-init.log in the guest "
        "(`cloud-init schema --system` shows user-data problems)"
    )
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(
                f"{ssh.where}: cloud-init did not finish within {timeout_s:.0f} s", hint=hint
            )
        if not _transport_alive(ssh):
            _reconnect(ssh, reconnect, deadline - time.monotonic(), "transport closed")
            reconnects += 1
            continue
        try:
            result = ssh.run(command, timeout_s=remaining, check=False)
        except GuestError as exc:
            if _transport_alive(ssh):  # the command timed out on a live connection
                raise GuestError(
                    f"{ssh.where}: cloud-init did not finish within {timeout_s:.0f} s ({exc})",
                    hint=hint,
                ) from exc
            _reconnect(ssh, reconnect, deadline - time.monotonic(), str(exc))
            reconnects += 1
            continue
        if result.exit_code == -1 or not _transport_alive(ssh):  # channel closed: no exit status
            _reconnect(ssh, reconnect, deadline - time.monotonic(), "no exit status")
            reconnects += 1
            continue
        stderr = result.stderr.decode(errors="replace")
        if command == STATUS_JSON_CMD and "unrecognized arguments" in stderr:
            command = STATUS_TEXT_CMD  # cloud-init < 22.3 has no --format
            continue
        if result.exit_code == 127 or ("not found" in stderr and not result.stdout.strip()):
            raise GuestError(
                f"{ssh.where}: the guest has no cloud-init ({stderr.strip()[:200]})",
                hint="use an image with cloud-init, or boot it as a plain rootfs guest",
            )
        status = parse_status(result.text)
        if status.running:  # --wait returned early (cloud-init restarted): ask again
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            continue
        if status.failed:
            tail = _output_tail(ssh)
            detail = "\n".join(status.errors) or status.detail
            message = (
                f"{ssh.where}: cloud-init finished with status {status.extended_status}: "
                f"{detail.strip()[:1500]}"
            )
            if tail:
                message += f"\n--- /var/log/cloud-init-output.log (tail) ---\n{tail[-2000:]}"
            raise GuestError(message, hint=hint)
        return {
            "status": status.status,
            "extended_status": status.extended_status,
            "errors": list(status.errors),
            "detail": status.detail,
            "exit_code": result.exit_code,
            "wait_s": round(time.monotonic() - started, 2),
            "reconnects": reconnects,
        }


def check_instance_id(ssh: GuestSSH, expected: str, *, timeout_s: float = 30) -> None:
    """The guest that answered is the one booted with this seed (a stale guest on a reused port
    would report another instance-id); the cloud-guest twin of the bench's nonce check."""
    result = ssh.run("cat /var/lib/cloud/data/instance-id", timeout_s=timeout_s, check=False)
    found = result.text.strip()
    if found != expected:
        raise GuestError(
            f"{ssh.where}: the guest reports instance-id {found or '(none)'!r}, "
            f"expected {expected!r}",
            hint="a stale guest holds the port, or cloud-init did not read vmlab's seed",
        )
