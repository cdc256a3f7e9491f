"""Who owns a libvirt domain or secret, sweeping those whose vmlab is gone, and lab secrets.

Every domain carries a ``<vmlab:owner>`` metadata element (host, boot id, pid and pid start
time of the vmlab that started it); each secret vmlab defines carries the same record in its
description. Before each launch, ``vmlab-`` domains and secrets whose owner ran on this host and
is gone are removed; one without that record, or owned by another host or by a live process, is
never touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmlab.launch.libvirt_api import _error_code, libvirt_module, remove_domain
from vmlab.render.libvirt import NAME_PREFIX, OWNER_NS, Owner, render_secret

log = logging.getLogger(__name__)

SECRET_OWNER_TAG = "vmlab-owner"  # noqa: S105 - a label, not a password


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


# --- stale domains -------------------------------------------------------------------------
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


# --- lab networks (a NIC with attach: network) ------------------------------------------------
# libvirt 9.0 (Debian 12) keeps no metadata on a network (virNetworkSetMetadata is 9.7), so
# the owner's pid and start time are in the network's name: vmlab-net-<pid>-<ticks>-<rest>.
NETWORK_NAME = re.compile(r"vmlab-net-(\d+)-(\d+)-[a-z0-9-]+")


def network_owner_tag() -> str:
    """This process as a libvirt network's name carries it."""
    pid = os.getpid()
    return f"{pid}-{start_ticks(pid) or 0}"


@contextmanager
def lab_network(conn: Any, xml: str, name: str) -> Iterator[None]:
    """A transient libvirt network for one case's guest; destroyed (gone: it is transient)
    when the guest is."""
    if not NETWORK_NAME.fullmatch(name):
        raise ValueError(f"lab network names are vmlab-net-<pid>-<ticks>-...: {name!r}")
    network = conn.networkCreateXML(xml)
    try:
        yield
    finally:
        network.destroy()


def sweep_stale_networks(conn: Any) -> list[str]:
    """Destroy ``vmlab-net-*`` networks whose vmlab (named in the network) is gone."""
    removed: list[str] = []
    for network in conn.listAllNetworks(0):
        name = str(network.name())
        match = NETWORK_NAME.fullmatch(name)
        if match is None:
            continue
        pid, ticks = int(match.group(1)), int(match.group(2))
        if start_ticks(pid) == ticks:
            continue  # its vmlab still runs
        log.warning("removing stale libvirt network %s (pid %d is gone)", name, pid)
        if network.isActive():
            network.destroy()
        if network.isPersistent():
            network.undefine()
        removed.append(name)
    return removed
