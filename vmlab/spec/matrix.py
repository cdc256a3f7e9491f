"""Matrix expansion: each list where one value belongs is an axis; the guests are the product.

Axes are found by walking the raw spec alongside the models (:mod:`vmlab.spec.models`): a list
given for a field that holds one value is an axis, and a field that holds a list (``disks``,
``nics``) is an axis only when given a list of lists. Each axis value gets a readable label
(:func:`_label`); the labels make up the case ids.

``include:`` adds cases the product does not give: each entry is a ``name`` and a partial
variant merged over the spec's own (mappings merge key by key, anything else is replaced), so an
entry says only what differs. Axes the entry leaves in place still expand; its cases' ids start
with its name.
"""

from __future__ import annotations

import itertools
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field

from vmlab.spec.base import Model
from vmlab.spec.hypervisor import Hypervisor
from vmlab.spec.models import Guest

# Keys of the spec file that describe one guest and can therefore be matrix axes.
_VARIANT_KEYS = ("launcher", "accel", "hypervisor", "guest")
# An include entry's name: the start of its cases' ids (no "_": that joins axis labels).
INCLUDE_NAME = r"^[a-z0-9][a-z0-9.+-]{0,39}$"


def _list_annotation(annotation: Any) -> Any:
    """The list type inside an annotation (`list[X]`, `list[X] | None`), or None."""
    for member in _unwrap(annotation):
        if typing.get_origin(member) is list:
            return member
    return None


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: Optional/Union members, Annotated stripped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _model_for(annotation: Any, value: Mapping[str, Any]) -> type[BaseModel] | None:
    """Which model a mapping will validate as (picks a discriminated union member by `type`)."""
    models = [a for a in _unwrap(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1:
        return models[0]
    for model in models:
        field = model.model_fields.get("type")
        if field is not None and typing.get_args(field.annotation) == (value.get("type"),):
            return model
    return None


def _axes(value: Any, model: type[BaseModel], path: str) -> Iterator[tuple[str, list[Any]]]:
    """Yield (path, values) for every field of `value` that is a list where one value belongs."""
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        field = model.model_fields.get(key)
        if field is None:
            continue  # unknown keys are reported by validation, with their path
        here = f"{path}.{key}" if path else key
        annotation = field.annotation
        if (list_type := _list_annotation(annotation)) is not None:
            if isinstance(item, list) and item and all(isinstance(i, list) for i in item):
                yield here, item
                continue
            (inner,) = typing.get_args(list_type)
            if isinstance(item, list):
                for index, element in enumerate(item):
                    if isinstance(element, Mapping) and (sub := _model_for(inner, element)):
                        yield from _axes(element, sub, f"{here}.{index}")
            continue
        if isinstance(item, list):
            yield here, item
        elif isinstance(item, Mapping) and (sub := _model_for(annotation, item)):
            yield from _axes(item, sub, here)


def _set_path(data: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def _label(path: str, value: Any) -> str:
    """A readable, file-name-safe token for one axis value, used in case ids."""
    key = path.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        text = key if value else f"no-{key}"
    elif isinstance(value, int | float):
        text = f"{key}-{value}"
    elif isinstance(value, Mapping):
        keys = ("kind", "model", "target", "attach", "forward", "type", "format")
        parts = [value.get(k) for k in keys]
        backend = value.get("backend")
        if isinstance(backend, Mapping):
            parts += [backend.get("type"), backend.get("format")]
            parts += [k for k, v in backend.items() if v is True]  # krbd, overlay, ...
        parts += [k for k, v in value.items() if v is True]
        parts += [f"{k}-{v}" for k, v in value.items() if k in ("queues", "num_queues")]
        text = "-".join(str(p) for p in parts if p) or "-".join(map(str, value.values()))
    elif isinstance(value, list):
        text = "+".join(_label(path, v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^a-z0-9.+-]+", "-", text.lower()).strip("-") or key


class _VariantFields(Model):
    """The part of the spec file that describes one guest (for axis discovery)."""

    launcher: Literal["qemu", "libvirt"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    hypervisor: Hypervisor = "host"
    guest: Guest = Field(default_factory=Guest)


def case_id(params: Mapping[str, str]) -> str:
    """Readable id from the axis values, in spec order: 'virtio-blk', 'nvme_iothread'..."""
    return "_".join(params.values()) or "default"


def _product(base: Mapping[str, Any]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    axes = list(_axes(base, _VariantFields, ""))
    out: list[tuple[dict[str, str], dict[str, Any]]] = []
    for combo in itertools.product(*(values for _, values in axes)):
        variant = _deepcopy(base)
        params: dict[str, str] = {}
        for (path, _), value in zip(axes, combo, strict=True):
            _set_path(variant, path, value)
            params[path] = _label(path, value)
        out.append((params, variant))
    return out


def _variant_part(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in _VARIANT_KEYS if k in raw}


def _merge(base: Any, override: Any) -> Any:
    """`override` over `base`: mappings merge key by key, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = {k: _deepcopy(v) for k, v in base.items()}
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else _deepcopy(value)
        return merged
    return _deepcopy(override)


def include_entries(raw: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The well-formed entries of the spec's ``include:`` as (name, the merged variant part);
    :func:`include_problems` says what is wrong with the others."""
    entries = raw.get("include")
    if not isinstance(entries, list):
        return []
    base = _variant_part(raw)
    out = []
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            override = {k: v for k, v in entry.items() if k in _VARIANT_KEYS}
            out.append((entry["name"], _merge(base, override)))
    return out


def include_problems(raw: Mapping[str, Any]) -> list[str]:
    """What is wrong with the shape of ``include:`` (its variants are validated like any)."""
    if "include" not in raw:
        return []
    entries = raw["include"]
    if not isinstance(entries, list):
        return ["include: expected a list of cases, each {name, and what differs: guest, ...}"]
    problems: list[str] = []
    names: list[str] = []
    for index, entry in enumerate(entries):
        where = f"include.{index}"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected a mapping {{name, guest, ...}}")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not re.fullmatch(INCLUDE_NAME, name):
            problems.append(
                f"{where}.name: a case name is 1-40 of a-z 0-9 . + - (it starts the case id)"
                + (f" (got {name!r})" if name is not None else "")
            )
        elif name in names:
            problems.append(f"{where}.name: {name!r} names an earlier include entry too")
        else:
            names.append(name)
        for key in sorted(set(entry) - {"name", *_VARIANT_KEYS}):
            problems.append(
                f"{where}.{key}: unknown key (an include entry holds name and any of: "
                f"{', '.join(_VARIANT_KEYS)})"
            )
        if set(entry) <= {"name"}:
            problems.append(f"{where}: says nothing that differs (give guest, launcher, ...)")
    return problems


def expand_matrix(raw: Mapping[str, Any]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Cross product of every axis in the guest part of a raw spec, then the ``include:`` cases.

    Returns (params, variant) pairs where params maps axis path -> readable label, in the order
    the axes appear in the file (an included case's first param is ``include`` -> its name),
    and variant is the raw mapping with one value per axis.
    """
    out = _product(_variant_part(raw))
    for name, merged in include_entries(raw):
        out += [({"include": name, **params}, variant) for params, variant in _product(merged)]
    return out


def matrix_axes(raw: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The axes of a raw spec's matrix as (path, number of values), without expanding it."""
    return [(path, len(values)) for path, values in _axes(_variant_part(raw), _VariantFields, "")]


def count_cases(raw: Mapping[str, Any]) -> int:
    """How many cases :func:`expand_matrix` gives, without expanding it."""
    count = math.prod(n for _, n in matrix_axes(raw))
    for _, merged in include_entries(raw):
        count += math.prod(len(v) for _, v in _axes(merged, _VariantFields, ""))
    return count


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data
