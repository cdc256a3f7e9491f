"""What every spec model shares: frozen, no unknown keys, no control characters in any string
(:mod:`vmlab.spec.text`); sizes, and the patterns and bounds of names and numbers."""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from vmlab.sizes import parse_size
from vmlab.spec.text import refused_text

SLUG = r"^[a-z0-9][a-z0-9_.-]{0,39}$"
MAX_CPU = 8191  # a host CPU number (Linux's NR_CPUS tops out at 8192)
DAY_S = 86_400
# A QEMU machine type is a name (q35, pc-q35-7.2, microvm): options go elsewhere.
MACHINE = r"[a-z0-9][a-z0-9._-]{0,63}"
# A CPU model, optionally with feature flags: host, max, Skylake-Server,-hle,+pcid,level=13.
CPU_MODEL = (
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(,[+-]?[A-Za-z0-9_.-]{1,64}(=[A-Za-z0-9_.-]{1,64})?)*$"
)


def _checked_size(value: str) -> str:
    parse_size(value)
    return value


Size = Annotated[str, AfterValidator(_checked_size)]
"""A size as the spec writes it ('1G', '512M', '4k'), checked to parse; kept as written."""


class Model(BaseModel):
    """Frozen, no unknown keys, and no control characters in any string it is given."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Prose fields (never rendered into argv, XML or job files): newlines and tabs allowed.
    _free_text: ClassVar[frozenset[str]] = frozenset()
    # Fields that hold a file's text verbatim (the spec's own source): not checked at all.
    _verbatim: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        for key, value in data.items():
            if key in _nested_fields(cls) or key in cls._verbatim:
                continue  # a model of its own checks it, or it is a file's text
            allow = "\n\t" if key in cls._free_text else ""
            if found := refused_text(value, allow=allow):
                raise PydanticCustomError(
                    "control_character",
                    "{found}: spec strings may not hold control characters (newline, tab, ...); "
                    "they would split or change the QEMU argv, XML or fio job file",
                    {"found": found, "field": str(key)},
                )
        return data


@functools.cache
def _nested_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a model that hold other models (which check their own strings)."""

    def holds_model(annotation: Any) -> bool:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return True
        return any(holds_model(arg) for arg in typing.get_args(annotation))

    return frozenset(n for n, f in model.model_fields.items() if holds_model(f.annotation))
