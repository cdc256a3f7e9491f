"""The libvirt launcher: render domain XML, define and start it, wait for the serial marker.

Same contract as :class:`vmlab.launch.direct.QemuLauncher`: ``launch(request)`` is a context
manager yielding a guest whose SSH answers at ``ssh_host:ssh_port``; on every way out (an
error, Ctrl-C) the domain is shut down (ACPI power button, then ``destroy``) and undefined.

Every domain is named ``vmlab-<run>-<case>`` and carries a ``<vmlab:owner>`` metadata element
(host, boot id, pid and pid start time of the vmlab that started it). Before each launch the
launcher removes ``vmlab-`` domains whose owner ran on this host and is gone; a domain without
that element, or owned by another host or by a live process, is never touched.

libvirt-python is an optional dependency (``pip install 'vmlab[libvirt]'``), imported on first
use, so vmlab works without it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from vmlab.ceph.info import read_key
from vmlab.errors import HostError, LaunchError
from vmlab.launch.base import LaunchRequest
from vmlab.launch.direct import free_port, retry_port
from vmlab.launch.watch import check_kvm, wait_marker
from vmlab.render.libvirt import (
    NAME_PREFIX,
    OWNER_NS,
    DomainRuntime,
    Owner,
    RenderedDomain,
    domain_name,
    render_libvirt,
    render_secret,
)

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")  # where libvirtd (virtlogd) logs each domain
SECRET_OWNER_TAG = "vmlab-owner"  # noqa: S105 - a label, not a password
START_HINT = (
    "start libvirt: `virtlogd -d && libvirtd -d` as root (no systemd), or "
    "`systemctl start libvirtd`; check with `virsh -c qemu:///system version`"
)


# --- libvirt-python, imported on first use ---------------------------------------------------
_MODULES: dict[str, ModuleType] = {}


def _quiet_handler(_ctx: object, err: Any) -> None:
    """libvirt prints every error to stderr unless a handler is registered: log it instead."""
    log.debug("libvirt: %s", err[2] if isinstance(err, list | tuple) and len(err) > 2 else err)


def libvirt_module(name: str = "libvirt") -> ModuleType:
    """``libvirt`` or ``libvirt_qemu`` from libvirt-python; HostError if it is not installed."""
    if name not in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise HostError(
                f"the libvirt launcher needs libvirt-python ({name} is not importable)",
                hint="apt-get install libvirt-dev pkg-config gcc python3-dev, then "
                "pip install 'vmlab[libvirt]' (libvirt-python)",
            ) from exc
        if name == "libvirt":
            module.registerErrorHandler(_quiet_handler, None)
        _MODULES[name] = module
    return _MODULES[name]


def _error_code(exc: BaseException) -> int | None:
    get = getattr(exc, "get_error_code", None)
    return int(get()) if callable(get) and get() is not None else None


# --- who owns a domain -----------------------------------------------------------------------
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22); None if gone.

    A zombie counts as gone (PID 1 here may never reap it).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def current_owner(run_id: str, case_id: str) -> Owner:
    pid = os.getpid()
    return Owner(
        host=socket.gethostname(),
        boot_id=boot_id(),
        pid=pid,
        start_ticks=start_ticks(pid) or 0,
        run_id=run_id,
        case_id=case_id,
    )


def parse_owner(xml_text: str) -> Owner | None:
    """The ``<vmlab:owner .../>`` element as :class:`Owner`; None if it is not one."""
    try:
        elem = ET.fromstring(xml_text)  # noqa: S314 - written by vmlab, read back from libvirtd
        return Owner(
            host=elem.attrib["host"],
            boot_id=elem.attrib["boot_id"],
            pid=int(elem.attrib["pid"]),
            start_ticks=int(elem.attrib["start_ticks"]),
            run_id=elem.attrib.get("run", ""),
            case_id=elem.attrib.get("case", ""),
        )
    except (ET.ParseError, KeyError, ValueError):
        return None


def owner_gone(owner: Owner) -> bool:
    """True only when the owner certainly ran on this host and is no longer running."""
    if owner.host != socket.gethostname():
        return False  # another machine's vmlab: we cannot tell, so it is not ours to remove
    if owner.boot_id != boot_id():
        return True  # this host rebooted since
    return start_ticks(owner.pid) != owner.start_ticks


def domain_owner(domain: Any) -> Owner | None:
    lv = libvirt_module()
    try:
        text = domain.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    except lv.libvirtError as exc:
        if _error_code(exc) == lv.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return parse_owner(str(text))


# --- stopping ------------------------------------------------------------------------------
def _wait_inactive(domain: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while domain.isActive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def remove_domain(domain: Any, *, powerdown_s: float) -> None:
    """ACPI power button, wait, destroy; then undefine, on every path (Ctrl-C included)."""
    lv = libvirt_module()
    try:
        if powerdown_s > 0 and domain.isActive():
            domain.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            if not _wait_inactive(domain, powerdown_s):
                log.info("domain %s did not power off within %.0f s", domain.name(), powerdown_s)
    except lv.libvirtError as exc:
        log.debug("shutting down %s: %s", domain.name(), exc)
    finally:
        try:
            if domain.isActive():
                domain.destroy()
        except lv.libvirtError as exc:
            if _error_code(exc) != lv.VIR_ERR_NO_DOMAIN:
                log.warning("destroying %s: %s", domain.name(), exc)
        finally:
            try:
                domain.undefineFlags(
                    lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | lv.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            except lv.libvirtError as exc:
                if _error_code(exc) != lv.VIR_ERR_NO_DOMAIN:  # transient: gone on destroy
                    raise


def sweep_stale_domains(conn: Any) -> list[str]:
    """Remove ``vmlab-*`` domains whose owner ran on this host and is gone; returns names."""
    removed: list[str] = []
    for domain in conn.listAllDomains(0):
        name = str(domain.name())
        if not name.startswith(NAME_PREFIX):
            continue
        try:
            owner = domain_owner(domain)
        except libvirt_module().libvirtError as exc:  # it went away while we looked
            log.debug("reading the owner of %s: %s", name, exc)
            continue
        if owner is None:
            log.warning(
                "libvirt domain %s has no vmlab owner record: left alone "
                "(remove it with `virsh destroy %s; virsh undefine %s` if it is stale)",
                name,
                name,
                name,
            )
            continue
        if not owner_gone(owner):
            continue
        log.warning(
            "removing stale libvirt domain %s (run %s, its vmlab pid %d is gone)",
            name,
            owner.run_id,
            owner.pid,
        )
        remove_domain(domain, powerdown_s=0)
        removed.append(name)
    return removed


# --- secrets -------------------------------------------------------------------------------
def _owner_description(owner: Owner) -> str:
    return f"{SECRET_OWNER_TAG} " + json.dumps(
        {
            "host": owner.host,
            "boot_id": owner.boot_id,
            "pid": owner.pid,
            "start_ticks": owner.start_ticks,
            "run": owner.run_id,
            "case": owner.case_id,
        },
        sort_keys=True,
    )


def _secret_owner(secret: Any) -> Owner | None:
    try:
        root = ET.fromstring(secret.XMLDesc(0))  # noqa: S314 - from libvirtd, not a user
        desc = root.findtext("description") or ""
        data = json.loads(desc.removeprefix(f"{SECRET_OWNER_TAG} "))
        return Owner(
            host=str(data["host"]),
            boot_id=str(data["boot_id"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            run_id=str(data.get("run", "")),
            case_id=str(data.get("case", "")),
        )
    except (ET.ParseError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def lab_secret(conn: Any, *, usage_name: str, value: bytes, owner: Owner) -> Iterator[str]:
    """Define a private, ephemeral libvirt secret (e.g. a Ceph key); yields its UUID.

    ``usage_name`` must start with ``vmlab-``, so a later run can sweep it if this one dies.
    """
    if not usage_name.startswith(NAME_PREFIX):
        raise ValueError(f"secret usage names start with {NAME_PREFIX!r}: {usage_name!r}")
    xml = render_secret(usage_name=usage_name, description=_owner_description(owner))
    secret = conn.secretDefineXML(xml, 0)
    try:
        secret.setValue(value, 0)
        yield str(secret.UUIDString())
    finally:
        secret.undefine()


def sweep_stale_secrets(conn: Any) -> list[str]:
    """Undefine ``vmlab-*`` secrets whose owner ran on this host and is gone."""
    removed: list[str] = []
    for secret in conn.listAllSecrets(0):
        usage = str(secret.usageID() or "")
        if not usage.startswith(NAME_PREFIX):
            continue
        owner = _secret_owner(secret)
        if owner is None or not owner_gone(owner):
            continue
        log.warning("removing stale libvirt secret %s (run %s)", usage, owner.run_id)
        secret.undefine()
        removed.append(usage)
    return removed


# --- the launcher --------------------------------------------------------------------------
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
        """Secrets (RBD keys) first, then the domain; undone in reverse on every way out."""
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
        with contextlib.ExitStack() as secrets:
            for usage, rbd in rendered.secrets:
                secrets.enter_context(
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
