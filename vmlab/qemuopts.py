"""QEMU's key=value,key=value option syntax, shared by every renderer of QEMU arguments."""

from __future__ import annotations


def qemu_quote(value: object) -> str:
    """Escape a value for QEMU's option syntax: ',' becomes ',,'."""
    return str(value).replace(",", ",,")
