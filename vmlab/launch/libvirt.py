"""The libvirt launcher: render domain XML, define and start it, wait for the serial marker.

Same contract as :class:`vmlab.launch.direct.QemuLauncher`: ``launch(request)`` is a context
manager yielding a guest whose SSH answers at ``ssh_host:ssh_port``; on every way out (an
error, Ctrl-C) the domain is shut down (ACPI power button, then ``destroy``) and undefined.

Every domain is named ``vmlab-<run>-<case>`` and carries a ``<vmlab:owner>`` metadata element
(host, boot id, pid and pid start time of the vmlab that started it). Before each launch the
launcher removes ``vmlab-`` domains whose owner ran on this host and is gone; a domain without
that element, or owned by another host or by a live process, is never touched (ownership,
the sweep and the RBD secrets: :mod:`vmlab.launch.libvirt_owner`).

libvirt-python is an optional dependency (``pip install 'vmlab[libvirt]'``), imported on first
use, so vmlab works without it (:mod:`vmlab.launch.libvirt_api`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmlab.ceph.info import read_key
from vmlab.errors import LaunchError
from vmlab.launch.base import LaunchRequest
from vmlab.launch.direct import free_port, retry_port
from vmlab.launch.libvirt_api import _error_code, libvirt_module, remove_domain
from vmlab.launch.libvirt_owner import (
    current_owner,
    lab_network,
    lab_secret,
    sweep_stale_domains,
    sweep_stale_networks,
    sweep_stale_secrets,
)
from vmlab.launch.watch import check_kvm, wait_marker
from vmlab.render.libvirt import (
    DomainRuntime,
    RenderedDomain,
    domain_name,
    render_libvirt,
    render_network,
)

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")  # where libvirtd (virtlogd) logs each domain
START_HINT = (
    "start libvirt: `virtlogd -d && libvirtd -d` as root (no systemd), or "
    "`systemctl start libvirtd`; check with `virsh -c qemu:///system version`"
)


def is_local_uri(uri: str) -> bool:
    """qemu:///system and qemu+ssh://localhost/system are local; qemu+ssh://hv1/ is not."""
    return (urlsplit(uri).hostname or "") in LOCAL_HOSTS


@dataclass
class LibvirtGuest:
    ssh_host: str
    ssh_port: int
    started_at: float
    name: str
    timings: dict[str, float] = field(default_factory=dict)
    accel_info: dict[str, Any] = field(default_factory=dict)


def _port_taken(exc: BaseException) -> bool:
    text = str(exc)
    return "host forwarding" in text or "hostfwd" in text


def _run_id(request: LaunchRequest) -> str:
    """results/<run-id>/cases/<case-id>: the run directory's name."""
    return request.case_dir.path.parent.parent.name


class LibvirtLauncher:
    """Boots each case as a libvirt domain (defined, started, undefined on exit)."""

    name = "libvirt"
    host_side_nics = True

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        *,
        emulator: str | None = None,
        dac_label: str | None = "auto",
        qemu_log_dir: Path = QEMU_LOG_DIR,
    ) -> None:
        """``dac_label``: "auto" runs QEMU as this process's uid:gid on a local
        ``qemu:///system`` (libvirt's own user cannot read a guest image under ``~/.cache``),
        None keeps libvirt's configured user, or an explicit ``+UID:+GID``."""
        self.uri = uri
        self.emulator = emulator
        if dac_label == "auto":
            system = urlsplit(uri).path.rstrip("/") == "/system"
            dac_label = f"+{os.getuid()}:+{os.getgid()}" if system else None
        self.dac_label = dac_label
        self.qemu_log_dir = qemu_log_dir

    @contextmanager
    def connection(self) -> Iterator[Any]:
        lv = libvirt_module()
        try:
            conn = lv.open(self.uri)
        except lv.libvirtError as exc:
            raise LaunchError(
                f"cannot connect to libvirt at {self.uri}: {exc}", hint=START_HINT
            ) from exc
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def launch(self, request: LaunchRequest) -> Iterator[LibvirtGuest]:
        if not is_local_uri(self.uri):
            raise LaunchError(
                f"libvirt at {self.uri} is another host: vmlab reads the serial log and "
                "reaches the guest's SSH forward on this host, and passes local image paths",
                hint="run vmlab on the hypervisor itself (the fleet playbooks do) with "
                "qemu:///system",
            )
        with self.connection() as conn:
            sweep_stale_domains(conn)
            sweep_stale_secrets(conn)
            sweep_stale_networks(conn)
            with retry_port(
                lambda suffix: self._launch_once(conn, request, suffix), port_taken=_port_taken
            ) as guest:
                yield guest

    def _render(self, request: LaunchRequest, suffix: str) -> tuple[DomainRuntime, RenderedDomain]:
        case = request.case
        run_id = _run_id(request)
        runtime = DomainRuntime(
            name=domain_name(run_id, case.id),
            serial_log=request.case_dir.file(f"serial{suffix}.log"),
            ssh_port=free_port(),
            owner=current_owner(run_id, case.id),
            dac_label=self.dac_label,
            emulator=self.emulator,
        )
        rendered = render_libvirt(
            case,
            accel=request.accel,
            boot=request.boot,
            disks=request.disks,
            runtime=runtime,
            nics=request.nics,
        )
        return runtime, rendered

    @contextmanager
    def _launch_once(
        self, conn: Any, request: LaunchRequest, suffix: str
    ) -> Iterator[LibvirtGuest]:
        """Lab networks and secrets (RBD keys) first, then the domain; undone in reverse on
        every way out."""
        case_dir = request.case_dir
        runtime, rendered = self._render(request, suffix)
        # Saved before it runs: a domain that never starts still leaves its XML behind.
        case_dir.write_text(f"domain{suffix}.xml", rendered.xml)
        case_dir.write_json(
            f"libvirt{suffix}.json",
            {
                "uri": self.uri,
                "name": rendered.name,
                "libvirt_version": conn.getLibVersion(),
                "hypervisor_version": conn.getVersion(),
                "taints": list(rendered.taints),
                "secrets": [usage for usage, _ in rendered.secrets],
            },
        )
        _refuse_existing(conn, rendered.name)
        with contextlib.ExitStack() as owned:
            for nic in request.nics:
                if nic.network is None:
                    continue
                xml = render_network(nic.network)
                case_dir.write_text(f"network-{nic.netdev_id}{suffix}.xml", xml)  # saved first
                try:
                    owned.enter_context(lab_network(conn, xml, nic.network.name))
                except libvirt_module().libvirtError as exc:
                    raise LaunchError(
                        f"libvirt could not start the network {nic.network.name}: {exc}",
                        log=case_dir.file(f"network-{nic.netdev_id}{suffix}.xml"),
                        hint="libvirt's nat and route modes need iptables and IPv4 forwarding",
                    ) from exc
            for usage, rbd in rendered.secrets:
                owned.enter_context(
                    lab_secret(
                        conn,
                        usage_name=usage,
                        value=read_key(rbd.keyring, f"client.{rbd.user}"),
                        owner=runtime.owner,
                    )
                )
            with self._domain(conn, request, runtime, rendered, suffix) as guest:
                yield guest

    @contextmanager
    def _domain(
        self,
        conn: Any,
        request: LaunchRequest,
        runtime: DomainRuntime,
        rendered: RenderedDomain,
        suffix: str,
    ) -> Iterator[LibvirtGuest]:
        """Define and start the domain; destroy and undefine it on the way out."""
        lv = libvirt_module()
        case_dir = request.case_dir
        serial_log = runtime.serial_log
        qemu_log = self.qemu_log_dir / f"{rendered.name}.log"  # QEMU's stderr, live
        t0 = time.monotonic()
        try:
            domain = conn.defineXML(rendered.xml)
        except lv.libvirtError as exc:
            raise LaunchError(
                f"libvirt refused the domain XML of {rendered.name}: {exc}",
                log=case_dir.file(f"domain{suffix}.xml"),
            ) from exc
        try:
            started_at = time.monotonic()
            try:
                domain.create()
            except lv.libvirtError as exc:
                check_kvm(request.accel, qemu_log, "as libvirt started the domain")
                raise LaunchError(
                    f"libvirt could not start {rendered.name}: {exc}", log=serial_log
                ) from exc
            guest = LibvirtGuest("127.0.0.1", runtime.ssh_port, started_at, rendered.name)
            guest.timings["define_s"] = started_at - t0
            guest.timings["start_s"] = time.monotonic() - started_at
            case_dir.write_text(f"domain-live{suffix}.xml", str(domain.XMLDesc(0)))
            guest.accel_info = _query_kvm(domain)
            case_dir.write_json(f"kvm{suffix}.json", guest.accel_info)
            guest.timings["serial_ready_s"] = _wait_serial(
                domain,
                serial_log,
                request.ready_marker,
                failed=request.failed_marker,
                started_at=started_at,
                timeout_s=request.deadlines.boot_s,
                accel=request.accel,
                qemu_log=qemu_log,
            )
            yield guest
        finally:
            try:
                remove_domain(domain, powerdown_s=request.deadlines.powerdown_s)
            finally:
                self._collect_qemu_log(rendered.name, case_dir.file(f"qemu{suffix}.log"))

    def _collect_qemu_log(self, name: str, target: Path) -> None:
        """Move libvirt's per-domain QEMU log (argv, warnings, taints) into the case dir."""
        source = self.qemu_log_dir / f"{name}.log"
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot copy %s: %s", source, exc)
            return
        with contextlib.suppress(OSError):
            source.unlink()


def _refuse_existing(conn: Any, name: str) -> None:
    """defineXML on an existing name would redefine that domain: never do that."""
    lv = libvirt_module()
    try:
        conn.lookupByName(name)
    except lv.libvirtError as exc:
        if _error_code(exc) == lv.VIR_ERR_NO_DOMAIN:
            return
        raise
    raise LaunchError(
        f"a libvirt domain named {name} already exists and its owner is alive",
        hint=f"another vmlab runs the same run id; or remove it: virsh destroy {name}; "
        f"virsh undefine {name}",
    )


def _query_kvm(domain: Any) -> dict[str, Any]:
    """QMP query-kvm through libvirt (taints the domain: custom-monitor), as the QEMU path."""
    lv, lvq = libvirt_module(), libvirt_module("libvirt_qemu")
    try:
        reply = lvq.qemuMonitorCommand(domain, json.dumps({"execute": "query-kvm"}), 0)
    except lv.libvirtError as exc:
        log.warning("query-kvm through libvirt failed: %s", exc)
        return {}
    answer = json.loads(reply).get("return")
    return dict(answer) if isinstance(answer, dict) else {}


def _wait_serial(
    domain: Any,
    serial_log: Path,
    marker: str,
    *,
    failed: str | None,
    started_at: float,
    timeout_s: float,
    accel: str,
    qemu_log: Path,
) -> float:
    """Wait for ``marker`` on the serial console; returns seconds since the domain started."""

    def check_alive(when: str) -> None:
        if not domain.isActive():
            raise LaunchError(
                f"domain {domain.name()} stopped {when}",
                log=serial_log,
                hint="read qemu.log in the case directory (libvirt's QEMU log)",
            )

    return wait_marker(
        serial_log,
        marker,
        failed=failed,
        timeout_s=timeout_s,
        started_at=started_at,
        accel=accel,
        qemu_log=qemu_log,
        check_alive=check_alive,
    )
