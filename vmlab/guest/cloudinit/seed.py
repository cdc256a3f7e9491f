"""The seed's three files rendered from ``templates/cloudinit/*.j2`` and checked as the YAML
cloud-init expects."""

from __future__ import annotations

from typing import Any

import jinja2
import yaml

from vmlab.errors import HostError, SpecError
from vmlab.guest.cloudinit.checks import SEED_HINT, check_config, yaml_value
from vmlab.guest.cloudinit.config import PowerState, SeedConfig, SeedFiles
from vmlab.render import environment
from vmlab.resources import REINSTALL_HINT

TEMPLATES = {
    "user-data": "cloudinit/user-data.j2",
    "meta-data": "cloudinit/meta-data.j2",
    "network-config": "cloudinit/network-config.j2",
}


def _environment() -> jinja2.Environment:
    # renders YAML: values are JSON-quoted by |y, nothing is HTML-escaped
    return environment(filters=(("y", yaml_value),))


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
    check_config(config)
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
