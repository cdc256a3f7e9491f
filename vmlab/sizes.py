"""Sizes as people write them ('1G', '512M', '4k'): no pydantic here, so that readers of
results (compare, import) need not load the spec models to normalise a block size."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(i?[bB])?\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """'1G', '512M', '4k', 1048576 -> bytes (binary units, as QEMU and fio read them)."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (expected e.g. 512M, 1G, 4k or a byte count)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])
