"""Matrix expansion: each list where one value belongs is an axis; the guests are the product.

Axes are found by walking the raw spec alongside the models (:mod:`vmlab.spec.models`): a list
given for a field that holds one value is an axis, and a field that holds a list (``disks``,
``nics``) is an axis only when given a list of lists. Each axis value gets a readable label
(:func:`_label`); the labels make up the case ids.
"""

from __future__ import annotations

import itertools
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
        parts = [value.get(k) for k in ("kind", "model", "target", "attach", "type", "format")]
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


def expand_matrix(raw: Mapping[str, Any]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Cross product of every axis in the guest part of a raw spec.

    Returns (params, variant) pairs where params maps axis path -> readable label, in the order
    the axes appear in the file, and variant is the raw mapping with one value per axis.
    """
    base = {k: raw[k] for k in _VARIANT_KEYS if k in raw}
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


def matrix_axes(raw: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The axes of a raw spec's matrix as (path, number of values), without expanding it."""
    base = {k: raw[k] for k in _VARIANT_KEYS if k in raw}
    return [(path, len(values)) for path, values in _axes(base, _VariantFields, "")]


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data
