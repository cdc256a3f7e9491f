"""What a NoCloud seed says: the records callers fill in (user, keys, host key, network,
packages, commands, power state) and the names every part of the seed agrees on."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SEED_LABEL = "cidata"
SEED_SERIAL = "vmlab-seed"  # virtio serial of the seed disk (20 characters at most)
CLOUD_READY_MARKER = "VMLAB-CLOUD-BOOT"
DEFAULT_HOSTNAME = "vmlab"
USER_MODE_ADDRESS = "10.0.2.15/24"  # QEMU user-mode networking: the guest ...
USER_MODE_GATEWAY = "10.0.2.2"  # ... the gateway (the host) ...
USER_MODE_DNS = "10.0.2.3"  # ... and the built-in DNS forwarder
STATUS_JSON_CMD = "cloud-init status --wait --long --format json"
STATUS_TEXT_CMD = "cloud-init status --wait --long"


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


def pinned_host_key(config: SeedConfig) -> str:
    """The 'ssh-ed25519 AAAA...' line GuestSSH.connect should pin for a guest of this seed."""
    return " ".join(config.host_key.public_line.split()[:2])
