"""Which fields of a SeedConfig the seed cannot be made from: wrong types, text YAML cannot
carry, names cloud-init or SSH would refuse. All problems at once, as one SpecError."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from vmlab.errors import SpecError
from vmlab.guest.cloudinit.config import SeedConfig

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


def yaml_value(value: object) -> str:
    """A JSON rendering (valid YAML flow style); unlike Jinja's tojson, no HTML escaping."""
    return json.dumps(value, ensure_ascii=False)


def _text_problems(where: str, value: object) -> list[str]:
    """Why a string the seed renders as YAML cannot go in (nothing if it can)."""
    if not isinstance(value, str):
        return [f"{where}: want a string, not {type(value).__name__} {value!r:.60}"]
    bad = _NOT_YAML.search(yaml_value(value))
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
        rendered = yaml_value(value)
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


def check_config(config: SeedConfig) -> None:
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
