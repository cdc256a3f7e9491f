"""SPDK's cpumask syntax (``-m`` of the app, ``cpumask`` of a vhost controller): hex (``0x3``,
``3``) or a core list (``[0,2-3]``)."""

from __future__ import annotations

import os

from vmlab.errors import HostError, SpecError


def parse_cpumask(mask: str | int) -> int:
    """The mask as an int; SpecError unless it names at least one core."""
    if isinstance(mask, int):
        value = mask
    else:
        text = mask.strip()
        try:
            if text.startswith("[") and text.endswith("]"):
                value = 0
                for part in filter(None, (p.strip() for p in text[1:-1].split(","))):
                    first, _, last = part.partition("-")
                    for core in range(int(first), int(last or first) + 1):
                        value |= 1 << core
            else:
                value = int(text.removeprefix("0x").removeprefix("0X"), 16)
        except ValueError:
            value = -1
    if value <= 0:
        raise SpecError(
            f"not a usable cpumask: {mask!r}",
            hint="write it in SPDK's syntax: hex (0x3) or a core list ([0,2-3]); "
            "it must name at least one core",
        )
    return value


def format_cpumask(mask: int) -> str:
    return f"0x{mask:x}"


def mask_cores(mask: int) -> list[int]:
    return [bit for bit in range(mask.bit_length()) if mask >> bit & 1]


def describe_mask(mask: int) -> str:
    return f"{format_cpumask(mask)} (cores {','.join(map(str, mask_cores(mask)))})"


def host_mask() -> int:
    """The cores vmlab may run on (its affinity), as a mask."""
    mask = 0
    for core in os.sched_getaffinity(0):
        mask |= 1 << core
    return mask


def check_host_cpumask(mask: int) -> None:
    """HostError unless every core of ``mask`` is one vmlab may use."""
    host = host_mask()
    if mask & ~host:
        raise HostError(
            f"SPDK cpumask {describe_mask(mask)} names cores this host does not give vmlab "
            f"(it may use {describe_mask(host)})",
            hint=f"choose a cpumask within {format_cpumask(host)} (spdk.cpumask in the spec)",
        )
