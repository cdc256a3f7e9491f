"""What a string in a spec may contain: no control, format, private-use or line-separator
characters, anywhere (keys of mappings included).

Every string of a spec ends up inside something line- or token-structured: a QEMU argv token,
a libvirt XML attribute (where a newline or a tab comes back as a space), a fio job file (where a
newline is a new option line), a shell-quoted command. A value that carries such a character
never means what the renderer would make of it, so the spec edge refuses it, naming the field.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

# Cc: C0/C1 controls (newline, tab, NUL, ESC...); Cf: format characters (bidi overrides,
# zero-width); Co: private use (the argv renderer's own token markers); Cs: lone surrogates;
# Zl/Zp: the Unicode line and paragraph separators (str.splitlines splits on them).
_REFUSED = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte"}


def bad_character(text: str, allow: str = "") -> str | None:
    """A description of the first refused character of `text` (not counting `allow`), or
    None."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in _REFUSED and char not in allow:
            name = _NAMES.get(char) or unicodedata.name(char, "a control character")
            return f"{name} (U+{ord(char):04X}) at character {index + 1}"
    return None


def refused_text(value: Any, where: str = "", allow: str = "") -> str | None:
    """Why a raw value (a string, or a list or mapping holding strings) is refused, or None."""
    if isinstance(value, str):
        found = bad_character(value, allow)
        return f"{where}{found}" if found else None
    if isinstance(value, bytes | bytearray):  # YAML's !!binary: pydantic would take it as text
        return f"{where}binary data (!!binary) where text belongs"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and (found := bad_character(key)):
                return f"{where}key {key!r}: {found}"
            if found := refused_text(item, f"{where}{key}: ", allow):
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if found := refused_text(item, f"{where}item {index}: ", allow):
                return found
    return None
