"""PCI addresses: normalized to ``DOMAIN:BUS:SLOT.FUNCTION``, and as libvirt writes them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vmlab.errors import SpecError

_ADDRESS_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)


def normalize_address(address: str) -> str:
    """``01:00.0`` → ``0000:01:00.0``; lower case; SpecError on anything else."""
    m = _ADDRESS_RE.match(address.strip())
    if m is None or int(m["slot"], 16) > 0x1F:
        raise SpecError(
            f"not a PCI address: {address!r}",
            hint="write it as DOMAIN:BUS:SLOT.FUNCTION (0000:01:00.0) or BUS:SLOT.FUNCTION "
            "(01:00.0); `lspci -D` lists them",
        )
    domain = int(m["domain"] or "0", 16)
    return f"{domain:04x}:{int(m['bus'], 16):02x}:{int(m['slot'], 16):02x}.{m['function']}"


def libvirt_hostdev(address: str) -> dict[str, str]:
    """Attributes of a libvirt ``<hostdev><source><address .../>``: hex strings."""
    domain, bus, rest = normalize_address(address).split(":")
    slot, function = rest.split(".")
    return {
        "domain": f"0x{domain}",
        "bus": f"0x{bus}",
        "slot": f"0x{slot}",
        "function": f"0x{function}",
    }


def _normalize_all(addresses: Sequence[str]) -> list[str]:
    if isinstance(addresses, str):
        raise TypeError("addresses is a sequence of PCI addresses, not one string")
    return list(dict.fromkeys(normalize_address(a) for a in addresses))
