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

One module per step: ``config`` (the records), ``checks`` (what a seed cannot hold), ``seed``
(rendering and validating the files), ``iso`` (the ``cidata`` image), ``status`` (waiting for
cloud-init in the guest). Callers import from here.
"""

from __future__ import annotations

from vmlab.guest.cloudinit.checks import SEED_HINT
from vmlab.guest.cloudinit.config import (
    CLOUD_READY_MARKER,
    DEFAULT_HOSTNAME,
    SEED_LABEL,
    SEED_SERIAL,
    STATUS_JSON_CMD,
    STATUS_TEXT_CMD,
    USER_MODE_ADDRESS,
    USER_MODE_DNS,
    USER_MODE_GATEWAY,
    Command,
    HostKey,
    NetworkConfig,
    PowerState,
    SeedConfig,
    SeedFiles,
    generate_host_key,
    new_instance_id,
    pinned_host_key,
)
from vmlab.guest.cloudinit.iso import make_seed, read_seed_iso, write_seed_iso
from vmlab.guest.cloudinit.seed import TEMPLATES, render_seed, validate_seed
from vmlab.guest.cloudinit.status import (
    CloudInitStatus,
    Reconnect,
    check_instance_id,
    parse_status,
    wait_cloud_init,
)

__all__ = [
    "CLOUD_READY_MARKER",
    "DEFAULT_HOSTNAME",
    "SEED_HINT",
    "SEED_LABEL",
    "SEED_SERIAL",
    "STATUS_JSON_CMD",
    "STATUS_TEXT_CMD",
    "TEMPLATES",
    "USER_MODE_ADDRESS",
    "USER_MODE_DNS",
    "USER_MODE_GATEWAY",
    "CloudInitStatus",
    "Command",
    "HostKey",
    "NetworkConfig",
    "PowerState",
    "Reconnect",
    "SeedConfig",
    "SeedFiles",
    "check_instance_id",
    "generate_host_key",
    "make_seed",
    "new_instance_id",
    "parse_status",
    "pinned_host_key",
    "read_seed_iso",
    "render_seed",
    "validate_seed",
    "wait_cloud_init",
    "write_seed_iso",
]
