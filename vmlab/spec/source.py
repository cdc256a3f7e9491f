"""Reading a spec file into plain YAML data, whatever the file holds, in well under a second.

A spec path may name a FIFO or a device (reading would block or never end), a file may be
huge, binary, Latin-1 or UTF-16, its YAML may nest thousands of levels (PyYAML recurses) or be an
alias bomb (a few lines whose anchors expand to millions of nodes), or repeat a key (YAML's last
one would silently win). Each of these is a :class:`SpecError` naming the file and what is
wrong, never a traceback or a hang.
"""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vmlab.errors import SpecError

MAX_SPEC_BYTES = 64 * 1024  # the largest example is 2 KiB; PyYAML reads ~150 KiB/s
MAX_DEPTH = 32  # a spec nests about 6 levels (guest.disks.0.backend.cluster.conf)
MAX_NODES = 100_000  # values after alias expansion; a 5-axis matrix spec has a few hundred

_HINT = "a spec is a small UTF-8 YAML file; see examples/"


def read_spec_text(path: Path) -> str:
    """The text of a spec file: a regular file, at most MAX_SPEC_BYTES, UTF-8 (a BOM allowed)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SpecError(
            f"{path}: cannot read spec: {exc.strerror}", file=path, hint="check the path"
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise SpecError(
            f"{path}: cannot read spec: {kind}", file=path, hint="give the path of a .yaml file"
        )
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path}: spec is {info.st_size:,} bytes, more than {MAX_SPEC_BYTES // 1024} KiB",
            file=path,
            hint=_HINT,
        )
    try:
        # O_NONBLOCK: were it swapped for a FIFO since stat(), open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(
            f"{path}: cannot read spec: {exc.strerror}", file=path, hint="check the path"
        ) from exc
    return decode_spec(data[: MAX_SPEC_BYTES + 1], path)


def decode_spec(data: bytes, path: Path) -> str:
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: spec is larger than {MAX_SPEC_BYTES // 1024} KiB", file=path)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecError(
            f"{path}: spec is UTF-16; vmlab reads UTF-8",
            file=path,
            hint=f"convert it: iconv -f UTF-16 -t UTF-8 {path}",
        )
    if b"\x00" in data:
        raise SpecError(f"{path}: spec holds NUL bytes: not a text file", file=path, hint=_HINT)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{path}: spec is not UTF-8: byte 0x{data[exc.start]:02x} at line {line}",
            file=path,
            hint=f"save it as UTF-8 (from Latin-1: iconv -f LATIN1 -t UTF-8 {path})",
        ) from exc


class _Refused(yaml.YAMLError):
    """What the loader refuses although YAML allows it, with what to do about it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses repeated keys and nesting deeper than MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _Refused(
                    f"nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}", _HINT
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                where = (key.tag, key.value)
                if where in seen:
                    raise _Refused(
                        f"key {key.value!r} appears twice (lines {seen[where]} and "
                        f"{key.start_mark.line + 1}); YAML would keep only the last",
                        "keep one of them (a list of values there is a matrix axis)",
                    )
                seen[where] = key.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _count_nodes(data: Any, path: Path) -> None:
    """Refuse data whose aliases expand past MAX_NODES (iteratively, stops at the limit)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(
                f"{path}: spec expands to more than {MAX_NODES:,} values (YAML aliases "
                "repeating aliases: an alias bomb?)",
                file=path,
                hint="write the spec out without nested anchors",
            )
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_yaml(text: str, path: Path) -> Any:
    """YAML text -> plain data, or a SpecError naming the file, the line and the problem."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"{path}: not valid YAML{at}: {exc.problem}",
            file=path,
            hint="check indentation and quoting",
        ) from exc
    except _Refused as exc:
        raise SpecError(f"{path}: {exc}", file=path, hint=exc.hint) from exc
    except yaml.YAMLError as exc:
        raise SpecError(
            f"{path}: not valid YAML: {exc}", file=path, hint="check indentation and quoting"
        ) from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"{path}: not a usable spec: {exc}", file=path, hint=_HINT) from exc
    _count_nodes(data, path)
    return data
