"""The fast path of fio parsing gives exactly what the checked path gives: the same model for
every corpus file, and for corrupted reports the same model or the same error."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlab.errors import ResultError
from vmlab.fio import parse as checked
from vmlab.fio.fastparse import FALLBACK_ERRORS, Unusual, fast_report
from vmlab.fio.model import FioOutput

DATA = Path(__file__).resolve().parents[1] / "data" / "fio"
FILES = sorted(p for p in DATA.rglob("*") if p.suffix in {".json", ".txt"})


def _checked(doc: dict[str, Any]) -> FioOutput:
    return checked._report(checked._Obj(doc, "", checked._Context("t", None)))


def _outcome(fn: Any, doc: dict[str, Any]) -> FioOutput | str:
    try:
        return fn(doc)  # type: ignore[no-any-return]
    except ResultError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fast_path_equals_the_checked_path_on_every_file(path: Path) -> None:
    text = path.read_text(errors="replace")
    try:
        doc = checked._find_report(text, checked._Context(None, path))
    except ResultError:
        pytest.skip("no usable report (the error tests cover it)")
    expected = _checked(doc)
    assert fast_report(doc) == expected  # the fast path takes it, no fallback
    assert checked.parse_fio_output(text) == expected


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, dict | list) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
# What corrupts a field: types the checked path rejects or converts, and a missing key.
_MUTATIONS = (True, False, None, "5", 5.0, 0.0, 0, 1.5, [], {}, _DELETE)


@pytest.mark.parametrize(
    "name", ["fio-3.33/randrw-jsonplus.json", "fio-3.33/client-two-servers.json"]
)
def test_corrupted_reports_give_the_checked_result_or_error(name: str) -> None:
    doc = json.loads((DATA / name).read_text())
    # keep the bins short: each leaf is one case
    for job in doc.get("jobs", doc.get("client_stats", [])):
        for direction in ("read", "write"):
            for kind in ("clat_ns", "lat_ns", "slat_ns"):
                block = job.get(direction, {}).get(kind, {})
                if "bins" in block:
                    block["bins"] = dict(list(block["bins"].items())[:3])
    tried = fallbacks = 0
    for path in _leaves(doc):
        for value in _MUTATIONS:
            bad = _set(doc, path, value)
            expected = _outcome(_checked, bad)
            try:
                got: FioOutput | str = fast_report(bad)
            except FALLBACK_ERRORS:
                fallbacks += 1
                got = expected  # what parse does then: the checked path
            tried += 1
            assert got == expected, (path, value)
    assert fallbacks > tried // 4  # most corruptions really did reach the checked path


def test_unusual_layouts_fall_back() -> None:
    doc = json.loads((DATA / "fio-3.33" / "randrw-jsonplus.json").read_text())
    doc["jobs"][0]["read"]["clat_ns"]["bins"] = {"12": 1, "012": 2}  # collide as integers
    with pytest.raises(Unusual):
        fast_report(doc)
    bins = checked.parse_fio_output(json.dumps(doc)).jobs[0].read.clat.bins_ns  # type: ignore[union-attr]
    assert bins == {12: 3}
