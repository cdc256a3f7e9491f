"""Property-based: specs mutated from examples/ and tests/data/specs/ (dropped keys, wrong types,
huge numbers, unknown keys, and every string field of the spec model fed `,` `"` `'` `<` `&`
`$(id)` `;` tab, newline, `..`, NUL, unicode), and spec files with mangled bytes.

What must hold, for every one: no traceback (a spec is refused with a SpecError or it renders),
no parse + render over 2 s, and a spec whose strings were changed renders argv of the same
length as the clean spec, case by case, unless it was refused. The string fields come from the
models themselves, so a field added later is fuzzed too. A fixed budget, derandomized: the
same examples every run, well under a minute.
"""

from __future__ import annotations

import copy
import tempfile
import time
import typing
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from vmlab.errors import SpecError, VmlabError
from vmlab.guest.boot import preview_boot
from vmlab.plan import plan
from vmlab.render.libvirt import preview_runtime, render_libvirt
from vmlab.render.model import BootImage, GuestRuntime
from vmlab.render.qemu import nic_plans, render_qemu
from vmlab.spec import DEFAULT_LAB, BenchSpec, FioJob, Guest, IperfJob, load_spec, parse_spec
from vmlab.spec.matrix import _model_for, _unwrap
from vmlab.storage import preview_disks

ROOT = Path(__file__).parent.parent.parent
FILES = [*(ROOT / "examples").glob("*.yaml"), *(ROOT / "tests" / "data" / "specs").glob("*.yaml")]
SOURCES = [DEFAULT_LAB] + [p.read_text() for p in sorted(FILES)]
BASES: list[dict[str, Any]] = [yaml.safe_load(text) for text in SOURCES]
# What a spec's strings may hold and the renderers must carry as they are ...
PRINTABLE = [",", '"', "'", "<", "&", "$(id)", ";", "..", " ", "é", "\\", "=", "-device", "%s"]
PRINTABLE += ["{{ x }}", "a b", "/", ":", "\u00a0", "\u3000"]
# ... and what the spec edge must refuse (controls, separators, the renderer's own markers).
CONTROL = ["\t", "\n", "\r", "\x00", "\x1b", "\x85", "\u2028", "\ufeff", "\U000f000a"]
FRAGMENTS = PRINTABLE + CONTROL
BOOT = BootImage(Path("<image>/vmlinux"), Path("<image>/initrd.img"), "<cmdline>")
FUZZ = settings(
    max_examples=600,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def render_all(spec: BenchSpec) -> list[int]:
    """Every case as `vmlab render` shows it: the QEMU argv length per case, in plan order
    (the libvirt XML is rendered too, and must parse)."""
    lengths = []
    for case in plan(spec):
        sources = {name: p.source for name, p in preview_disks(case).items()}
        boot = preview_boot(case.variant.guest, BOOT)
        runtime = GuestRuntime(
            qmp_socket=Path("<g>/qmp.sock"),
            serial_log=Path("<g>/serial.log"),
            pidfile=Path("<g>/qemu.pid"),
            ssh_port=10022,
            nics=nic_plans(case.variant.guest, None),
        )
        argv = render_qemu(
            case, qemu="qemu-system-x86_64", accel="tcg", boot=boot, disks=sources, runtime=runtime
        ).argv
        lengths.append(len(argv))
        try:
            xml = render_libvirt(
                case,
                accel="tcg",
                boot=boot,
                disks=sources,
                runtime=preview_runtime(case.id, serial_log=Path("<g>/serial.log")),
            ).xml
        except VmlabError:
            continue  # what libvirt cannot express is refused with a message
        ET.fromstring(xml)
    return lengths


# --- where the strings are: the models say --------------------------------------------------


def _holds_text(annotation: Any) -> bool:
    return any(a in (str, Path) for a in _unwrap(annotation)) or any(
        _holds_text(arg) for arg in typing.get_args(annotation) if arg is not type(None)
    )


def _text_fields(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if _holds_text(f.annotation)]


def _mappings(raw: dict[str, Any]) -> list[tuple[list[Any], type[BaseModel]]]:
    """Every mapping of a raw spec with the model it validates as, found through the models."""
    found: list[tuple[list[Any], type[BaseModel]]] = []

    def walk(node: Any, annotation: Any, path: list[Any]) -> None:
        if isinstance(node, list):
            inner = [
                typing.get_args(a)[0] for a in _unwrap(annotation) if typing.get_origin(a) is list
            ]
            for index, item in enumerate(node):
                walk(item, inner[0] if inner else annotation, [*path, index])
            return
        if not isinstance(node, Mapping) or (model := _model_for(annotation, node)) is None:
            return
        found.append((path, model))
        for key, value in node.items():
            if key in model.model_fields:
                walk(value, model.model_fields[key].annotation, [*path, key])

    walk(raw.get("guest", {}), Guest, ["guest"])
    for top, model in (("jobs", FioJob), ("net_jobs", IperfJob)):
        if isinstance(raw.get(top), list):
            for index, job in enumerate(raw[top]):
                walk(job, model, [top, index])
    return found


def _get(raw: Any, path: list[Any]) -> Any:
    for part in path:
        raw = raw[part]
    return raw


nasty = st.one_of(
    st.lists(st.sampled_from(PRINTABLE), min_size=1, max_size=4),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4),
).map("".join)


@st.composite
def string_mutation(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A base spec with one string field of one of its mappings (there or not yet) given nasty
    text (appended to its value, prepended, or instead of it), and its twin: the same spec
    with a plain value there instead (the old value, or "x")."""
    raw = copy.deepcopy(draw(st.sampled_from(BASES)))
    raw.setdefault("guest", {})
    path, model = draw(st.sampled_from([m for m in _mappings(raw) if _text_fields(m[1])]))
    twin = copy.deepcopy(raw)
    node, twin_node = _get(raw, path), _get(twin, path)
    text = draw(nasty)
    if model is FioJob and draw(st.booleans()):
        key = draw(st.sampled_from(["verify", "v" + text]))
        node["options"] = {**node.get("options", {}), key: text}
        twin_node["options"] = {**twin_node.get("options", {}), "verify": "x"}
        return raw, twin
    field = draw(st.sampled_from(_text_fields(model)))
    old = node.get(field)
    how = draw(st.sampled_from(["append", "prepend", "replace"]))
    if isinstance(old, str) and how != "replace":
        node[field] = old + text if how == "append" else text + old
    else:
        node[field] = text
        twin_node[field] = "x"
    return raw, twin


def _leaves(node: Any, path: list[Any]) -> list[list[Any]]:
    out = [path] if path else []
    if isinstance(node, Mapping):
        for key, value in node.items():
            out += _leaves(value, [*path, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _leaves(value, [*path, i])
    return out


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 2**63, 10**16, 1.5, float("nan"), float("inf")]),
    st.text(max_size=8),
    st.sampled_from([b"a\nb", b"\xff"]),  # YAML !!binary
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(["x", "type", "kind", "name"]), st.integers(0, 2), max_size=2),
)


@st.composite
def any_mutation(draw: st.DrawFn) -> dict[str, Any]:
    """A base spec with one value dropped, replaced by a wrong type or number, or a key added."""
    raw = copy.deepcopy(draw(st.sampled_from(BASES)))
    path = draw(st.sampled_from(_leaves(raw, [])))
    parent = _get(raw, path[:-1])
    how = draw(st.sampled_from(["drop", "replace", "unknown-key"]))
    if how == "drop":
        del parent[path[-1]]
    elif how == "replace":
        parent[path[-1]] = draw(WRONG)
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(["extra", "cpus ", "Name", "\n"]))] = draw(WRONG)
    return raw


def check(raw: Any) -> list[int] | None:
    """Parse and render within 2 s; None when refused: by the spec edge (SpecError) or, for
    what only a disk server knows, by the renderer with a VmlabError — never a traceback."""
    started = time.monotonic()
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        assert exc.problems or exc.message
        return None
    try:
        lengths = render_all(spec)
    except VmlabError as exc:
        assert exc.message
        return None
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"parse + render took {elapsed:.1f} s"
    return lengths


@FUZZ
@given(string_mutation())
def test_strings_never_change_the_argv_shape(
    mutated: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    raw, twin = mutated
    lengths = check(raw)
    event("refused" if lengths is None else "rendered")
    if lengths is not None and (plain := check(twin)) is not None:
        assert lengths == plain


@FUZZ
@given(any_mutation())
def test_dropped_keys_wrong_types_and_unknown_keys_are_refused_or_rendered(raw: Any) -> None:
    event("refused" if check(raw) is None else "rendered")


@settings(FUZZ, max_examples=300)
@given(
    st.sampled_from(SOURCES).map(str.encode),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=4)), max_size=4),
)
def test_mangled_spec_files_are_refused_or_read(
    text: bytes, edits: list[tuple[int, bytes]]
) -> None:
    for offset, data in edits:
        at = offset % (len(text) + 1)
        text = text[:at] + data + text[at + len(data) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_bytes(text)
        started = time.monotonic()
        try:
            spec = load_spec(path)
        except SpecError as exc:
            assert exc.file == path
        else:
            try:
                render_all(spec)
            except VmlabError as exc:
                assert exc.message
        assert time.monotonic() - started < 2
