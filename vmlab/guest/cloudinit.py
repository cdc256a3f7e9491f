"""cloud-init for "bring your own guest": a NoCloud seed, and waiting for cloud-init to finish.

The seed is three files rendered from ``templates/cloudinit/*.j2`` and checked as YAML:

* ``user-data`` (#cloud-config): the login user with the lab's SSH key, an ed25519 *host* key
  vmlab generated (so the guest's identity is pinned before it boots, as with the default
  image), packages, runcmd, an optional power_state, and a ``bootcmd`` that writes a readiness
  marker to the serial port;
* ``meta-data``: an ``instance-id`` unique per boot (cloud-init re-runs its per-instance
  modules) and the hostname;
* ``network-config`` (version 2): the management NIC matched by MAC, static (QEMU user-mode
  networking's 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3) or DHCP.

They go into an ISO 9660 image with volume label ``cidata`` (Joliet + Rock Ridge) written by
pycdlib, no genisoimage. cloud-init's NoCloud datasource finds it by label on any block device:
vmlab attaches it as a read-only virtio-blk disk (Debian's cloud kernel has no AHCI driver, so an
``ide-cd`` on q35 is invisible to it; virtio-blk works with every cloud kernel).
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import pycdlib
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import GuestError, HostError, SpecError
from vmlab.guest.ssh import GuestSSH
from vmlab.render import environment
from vmlab.resources import REINSTALL_HINT

log = logging.getLogger(__name__)

SEED_LABEL = "cidata"
SEED_SERIAL = "vmlab-seed"  # virtio serial of the seed disk (20 characters at most)
CLOUD_READY_MARKER = "VMLAB-CLOUD-BOOT"
DEFAULT_HOSTNAME = "vmlab"
USER_MODE_ADDRESS = "10.0.2.15/24"  # QEMU user-mode networking: the guest ...
USER_MODE_GATEWAY = "10.0.2.2"  # ... the gateway (the host) ...
USER_MODE_DNS = "10.0.2.3"  # ... and the built-in DNS forwarder
TEMPLATES = {
    "user-data": "cloudinit/user-data.j2",
    "meta-data": "cloudinit/meta-data.j2",
    "network-config": "cloudinit/network-config.j2",
}
STATUS_JSON_CMD = "cloud-init status --wait --long --format json"
STATUS_TEXT_CMD = "cloud-init status --wait --long"
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,2}( \S.*)?$"
)
# What YAML cannot carry even in a quoted string (PyYAML's reader refuses it). Values go in
# JSON-quoted (|y), which escapes the C0 controls but leaves these raw.
_NOT_YAML = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
SEED_HINT = (
    "the seed holds the cloud image's packages and runcmd from the spec and vmlab's own "
    "settings: give them as lists of plain strings (no DEL, C1 controls or lone surrogates)"
)


# --- the seed's content ----------------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    """An ed25519 SSH host key: the private half goes into the seed, the public one is pinned."""

    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----\n..."
    public_line: str  # "ssh-ed25519 AAAA..." (no comment), what GuestSSH.connect pins


def generate_host_key() -> HostKey:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return HostKey(private_openssh=pem, public_line=public.decode().strip())


@dataclass(frozen=True)
class NetworkConfig:
    """The management NIC (QEMU user-mode networking), matched by MAC address."""

    mac: str
    dhcp: bool = False
    address: str = USER_MODE_ADDRESS
    gateway: str | None = USER_MODE_GATEWAY
    dns: tuple[str, ...] = (USER_MODE_DNS,)
    name: str = "mgmt"  # the config's id; not the kernel's interface name


@dataclass(frozen=True)
class PowerState:
    """cloud-init's power_state: what to do once cloud-init has finished."""

    mode: Literal["poweroff", "reboot", "halt"] = "poweroff"
    delay: str = "now"
    timeout_s: int = 30
    message: str = "vmlab: cloud-init finished"


Command = str | Sequence[str]  # a shell string, or an argv list (cloud-init runs it unquoted)


@dataclass(frozen=True)
class SeedConfig:
    """Everything the NoCloud seed says. ``extra`` adds more top-level user-data keys."""

    instance_id: str
    authorized_keys: tuple[str, ...]
    host_key: HostKey
    network: NetworkConfig
    hostname: str = DEFAULT_HOSTNAME
    user: str = "root"
    packages: tuple[str, ...] = ()
    runcmd: tuple[Command, ...] = ()
    power_state: PowerState | None = None
    ready_marker: str | None = CLOUD_READY_MARKER
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedFiles:
    user_data: str
    meta_data: str
    network_config: str

    def as_dict(self) -> dict[str, str]:
        return {
            "user-data": self.user_data,
            "meta-data": self.meta_data,
            "network-config": self.network_config,
        }


def new_instance_id(nonce: str | None = None) -> str:
    """A fresh instance-id: 'vmlab-<nonce>' (the bench's boot nonce, or a random one)."""
    return f"vmlab-{nonce or secrets.token_hex(8)}"


def _yaml_value(value: object) -> str:
    """A JSON rendering (valid YAML flow style); unlike Jinja's tojson, no HTML escaping."""
    return json.dumps(value, ensure_ascii=False)


def _environment() -> jinja2.Environment:
    # renders YAML: values are JSON-quoted by |y, nothing is HTML-escaped
    return environment(filters=(("y", _yaml_value),))


def _text_problems(where: str, value: object) -> list[str]:
    """Why a string the seed renders as YAML cannot go in (nothing if it can)."""
    if not isinstance(value, str):
        return [f"{where}: want a string, not {type(value).__name__} {value!r:.60}"]
    bad = _NOT_YAML.search(_yaml_value(value))
    if bad is None:
        return []
    return [f"{where}: {value!r:.60} holds U+{ord(bad.group()):04X}, which YAML cannot carry"]


def _list_problems(where: str, value: object) -> list[str]:
    """Why a list of strings cannot go in (one string is not a list of them)."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [f"{where}: want a list of strings, not {type(value).__name__} {value!r:.60}"]
    return [p for i, item in enumerate(value) for p in _text_problems(f"{where}[{i}]", item)]


def _data_problems(where: str, value: object) -> list[str]:
    """Why a value of extra user-data cannot go in: not JSON data, or text YAML cannot carry."""
    try:
        rendered = _yaml_value(value)
    except (TypeError, ValueError) as exc:
        return [f"{where}: not YAML data ({exc})"]
    bad = _NOT_YAML.search(rendered)
    if bad is None:
        return []
    return [f"{where}: holds U+{ord(bad.group()):04X}, which YAML cannot carry"]


def _match(pattern: str, value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def _type_problems(config: SeedConfig) -> list[str]:
    """What keeps the seed from rendering: wrong types, and text YAML cannot carry."""
    problems = _list_problems("packages", config.packages)
    runcmd: object = config.runcmd
    if isinstance(runcmd, list | tuple):
        for i, cmd in enumerate(runcmd):
            if isinstance(cmd, str):
                problems += _text_problems(f"runcmd[{i}]", cmd)
            elif isinstance(cmd, list | tuple):
                problems += _list_problems(f"runcmd[{i}]", cmd)
            else:
                problems.append(
                    f"runcmd[{i}]: want a shell string or an argv list, not "
                    f"{type(cmd).__name__} {cmd!r:.60}"
                )
    else:
        problems += _list_problems("runcmd", runcmd)
    problems += _list_problems("authorized_keys", config.authorized_keys)
    net = config.network
    problems += _text_problems("network.address", net.address)
    problems += _text_problems("network.name", net.name)
    if net.gateway is not None:
        problems += _text_problems("network.gateway", net.gateway)
    problems += _list_problems("network.dns", net.dns)
    if config.power_state is not None:
        problems += _text_problems("power_state.delay", config.power_state.delay)
        problems += _text_problems("power_state.message", config.power_state.message)
    extra: object = config.extra
    if not isinstance(extra, Mapping):
        return [*problems, f"extra: want a mapping, not {type(extra).__name__}"]
    for key, value in extra.items():
        if not isinstance(key, str):
            problems.append(f"extra[{key!r}]: user-data keys are strings")
        else:
            problems += _data_problems(f"extra[{key!r}]", value)
    return problems


def _check_config(config: SeedConfig) -> None:
    """SpecError listing every field of ``config`` the seed cannot be made from."""
    problems = _type_problems(config)
    if not _match(_HOSTNAME_RE.pattern, config.hostname):
        problems.append(f"hostname: {config.hostname!r} is not a DNS label")
    if not _match(_USER_RE.pattern, config.user):
        problems.append(f"user: {config.user!r} is not a valid login name")
    if not _match(r"[A-Za-z0-9._-]{1,64}", config.instance_id):
        problems.append(f"instance-id: {config.instance_id!r}: use letters, digits, '._-'")
    keys: object = config.authorized_keys
    if isinstance(keys, list | tuple):
        if not keys:
            problems.append("authorized_keys: no authorized key: nobody could log in")
        problems += [
            f"authorized_keys[{i}]: not an OpenSSH public key line: {key[:40]!r}"
            for i, key in enumerate(keys)
            if isinstance(key, str) and not _KEY_RE.match(key.strip())
        ]
    if not _match(r"ssh-ed25519 .+", config.host_key.public_line):
        problems.append("host_key: the host key must be ed25519")
    if not _match(_MAC_RE.pattern, config.network.mac):
        problems.append(f"network.mac: {config.network.mac!r}: want lower-case aa:bb:cc:dd:ee:ff")
    if config.ready_marker is not None and not _match(r"[A-Za-z0-9_.-]+", config.ready_marker):
        problems.append(f"ready_marker: {config.ready_marker!r}: use letters, digits, '_.-'")
    user_keys = {
        "hostname", "preserve_hostname", "manage_etc_hosts", "locale", "disable_root", "users",
        "ssh_authorized_keys", "ssh_pwauth", "ssh_deletekeys", "ssh_keys",
        "bootcmd", "package_update", "packages", "runcmd", "power_state",
    }  # fmt: skip
    if isinstance(config.extra, Mapping):
        clash = sorted(set(config.extra) & user_keys)
        if clash:
            problems.append(f"extra: user-data keys {clash} clash with keys vmlab renders")
    if problems:
        raise SpecError("invalid cloud-init seed", problems=problems, hint=SEED_HINT)


def _power_state(power: PowerState | None) -> dict[str, Any] | None:
    if power is None:
        return None
    return {
        "mode": power.mode,
        "delay": power.delay,
        "timeout": power.timeout_s,
        "message": power.message,
        "condition": True,
    }


def _render(seed_file: str, /, **values: Any) -> str:
    template = TEMPLATES[seed_file]
    try:
        return _environment().get_template(template).render(**values)
    except jinja2.TemplateNotFound as exc:
        raise HostError(
            f"vmlab is installed without its template {template} (cloud-init {seed_file})",
            hint=REINSTALL_HINT,
        ) from exc
    except jinja2.TemplateError as exc:
        raise HostError(
            f"the template {template} (cloud-init {seed_file}) does not render: {exc}",
            hint="templates/cloudinit/ ships with vmlab: restore it (git checkout templates/ "
            "in a checkout, or reinstall vmlab)",
        ) from exc


def render_seed(config: SeedConfig) -> SeedFiles:
    """Render the three seed files and check that each is the YAML it should be. SpecError
    names every field the seed cannot be made from; HostError if a template is missing."""
    _check_config(config)
    runcmd = [cmd if isinstance(cmd, str) else list(cmd) for cmd in config.runcmd]
    user_data = _render(
        "user-data",
        instance_id=config.instance_id,
        hostname=config.hostname,
        user=config.user,
        authorized_keys=[k.strip() for k in config.authorized_keys],
        host_key_private=config.host_key.private_openssh,
        host_key_public=config.host_key.public_line,
        ready_marker=config.ready_marker,
        packages=list(config.packages),
        runcmd=runcmd,
        power_state=_power_state(config.power_state),
        extra=sorted(config.extra.items()),
    )
    meta_data = _render("meta-data", instance_id=config.instance_id, hostname=config.hostname)
    net = config.network
    network_config = _render(
        "network-config",
        name=net.name,
        mac=net.mac,
        dhcp=net.dhcp,
        address=net.address,
        gateway=net.gateway,
        dns=list(net.dns),
    )
    files = SeedFiles(user_data, meta_data, network_config)
    validate_seed(files)
    return files


def _invalid(problem: str) -> SpecError:
    return SpecError(f"invalid cloud-init seed: {problem}", hint=SEED_HINT)


def _load_mapping(name: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _invalid(f"{name} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise _invalid(f"{name} must be a YAML mapping, not {type(data).__name__}")
    return data


def validate_seed(files: SeedFiles) -> dict[str, dict[str, Any]]:
    """Parse the seed files; SpecError names what is wrong. Returns the parsed documents."""
    if not files.user_data.startswith("#cloud-config\n"):
        raise _invalid("user-data must start with the line '#cloud-config'")
    user = _load_mapping("user-data", files.user_data)
    meta = _load_mapping("meta-data", files.meta_data)
    net = _load_mapping("network-config", files.network_config)
    if not meta.get("instance-id"):
        raise _invalid("meta-data has no instance-id")
    if net.get("version") != 2 or not isinstance(net.get("ethernets"), dict):
        raise _invalid("network-config must be version 2 with an 'ethernets' mapping")
    keys = user.get("ssh_keys", {})
    if not isinstance(keys, dict) or set(keys) != {"ed25519_private", "ed25519_public"}:
        raise _invalid("user-data ssh_keys must hold ed25519_private and ed25519_public")
    return {"user-data": user, "meta-data": meta, "network-config": net}


# --- the ISO ---------------------------------------------------------------------------------

# ISO 9660 level-1 names (8.3, upper case); Linux shows the Rock Ridge / Joliet names.
_ISO_NAMES = {"user-data": "USERDATA.;1", "meta-data": "METADATA.;1", "network-config": "NETCFG.;1"}


def write_seed_iso(files: SeedFiles, dest: Path) -> Path:
    """Write the seed as an ISO 9660 image labelled ``cidata`` (Joliet + Rock Ridge)."""
    validate_seed(files)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, text in files.as_dict().items():
            data = text.encode()
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/{_ISO_NAMES[name]}",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(str(tmp))
    finally:
        iso.close()
    tmp.replace(dest)
    log.debug("wrote NoCloud seed %s", dest)
    return dest


def read_seed_iso(path: Path) -> tuple[str, dict[str, str]]:
    """(volume label, {Rock Ridge name: text}) of a seed ISO: what a guest's kernel shows."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        out: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
    finally:
        iso.close()
    return label, out


def make_seed(config: SeedConfig, dest: Path) -> Path:
    """Render, validate and write the seed ISO in one go; also keeps the rendered files beside
    it (``<dest>.d/``) so a failed boot can be debugged from the run directory."""
    files = render_seed(config)
    rendered = dest.with_name(dest.name + ".d")
    rendered.mkdir(parents=True, exist_ok=True)
    for name, text in files.as_dict().items():
        # The host key's private half stays in the ISO only.
        shown = re.sub(r'"-----BEGIN OPENSSH PRIVATE KEY-----[^"]*"', '"<redacted>"', text)
        (rendered / name).write_text(shown)
    return write_seed_iso(files, dest)


# --- readiness: cloud-init status --------------------------------------------------------------


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


def pinned_host_key(config: SeedConfig) -> str:
    """The 'ssh-ed25519 AAAA...' line GuestSSH.connect should pin for a guest of this seed."""
    return " ".join(config.host_key.public_line.split()[:2])
