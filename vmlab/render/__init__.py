"""Rendering what runs from Jinja templates: QEMU argv (:mod:`vmlab.render.qemu`), libvirt domain
XML (:mod:`vmlab.render.libvirt`), and everything else vmlab writes from a template (fio job
files, guest init scripts, cloud-init seeds, reports) through the one environment here.

Templates live in templates/ and are rendered with StrictUndefined, so a missing value is an
error at render time, never an empty string in an argv. XML templates are autoescaped.

An argv template emits one token per line, but a line break is the template's, never a value's:
what a ``{{ expression }}`` yields has its whitespace turned into private-use markers while the
template renders (:func:`_protect`), the text is split into lines, and only then are the markers
turned back (:func:`_restore`). So a value cannot split into more tokens, lose its leading or
trailing spaces, or vanish (an empty value on its own line is still one, empty, token).

In XML (``xml=True``) a value's tabs and line breaks are written as character references: an XML
parser turns a literal one inside an attribute into a space (attribute-value normalisation), so
libvirt would read back a different value than the spec gave.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from vmlab import resources
from vmlab.qemuopts import qemu_quote

Filter = tuple[str, Callable[..., Any]]


# Whitespace inside a value, while an argv template renders: U+F0000 + its code point (every
# whitespace character is below U+3001); U+F0000 itself marks an empty value. The spec edge
# refuses private-use characters (vmlab.spec.text), so no value carries these markers itself.
_MARK = 0xF0000
_MARKED = re.compile("[\U000f0000-\U000f3001]")


def _protect(value: Any) -> str:
    text = str(value)
    if not text:
        return chr(_MARK)
    return "".join(chr(_MARK + ord(c)) if c.isspace() else c for c in text)


def _restore(text: str) -> str:
    return _MARKED.sub(lambda m: "" if m[0] == chr(_MARK) else chr(ord(m[0]) - _MARK), text)


_XML_REFS = {"\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


def _xml_value(value: Any) -> Any:
    if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
        return value  # markup is the template's own; numbers carry no whitespace
    escaped = str(markupsafe.escape(value))
    refs = re.sub("[\t\n\r]", lambda m: _XML_REFS[m[0]], escaped)
    return markupsafe.Markup(refs)  # noqa: S704 - escaped just above


def environment(
    *,
    autoescape: bool = False,
    trim: bool = False,
    filters: tuple[Filter, ...] = (),
    argv: bool = False,
    xml: bool = False,
) -> jinja2.Environment:
    """The one Jinja environment factory: ``templates/`` as the loader, StrictUndefined (a
    missing value is an error, never an empty string), ``|q`` for QEMU option values (``,`` ->
    ``,,``) and any ``filters`` a caller adds. ``autoescape`` for XML and HTML; ``trim`` so
    block tags leave no blank lines (XML, Markdown). One environment per combination, made
    once. ``argv``: every expression's value is protected from line splitting; ``xml``
    (autoescaped): its whitespace is kept through XML parsing (see above)."""
    finalize = _protect if argv else _xml_value if xml else None
    return _environment(resources.templates_dir(), autoescape or xml, trim, filters, finalize)


@functools.cache
def _environment(
    templates: Path,
    autoescape: bool,
    trim: bool,
    filters: tuple[Filter, ...],
    finalize: Callable[[Any], Any] | None,
) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,  # noqa: S701 - argv, shell and YAML must not be HTML-escaped
        keep_trailing_newline=True,
        trim_blocks=trim,
        lstrip_blocks=trim,
        finalize=finalize,
    )
    env.filters["q"] = qemu_quote
    env.filters.update(dict(filters))
    return env


def render_text(template: str, **context: Any) -> str:
    """A plain-text template (argv, fio job files, shell)."""
    return environment().get_template(template).render(**context)


def render_argv(template: str, **context: Any) -> list[str]:
    """Render a template that emits one argv token per line (blank lines are dropped): one
    token per template line, whatever the values hold (see the module's docstring)."""
    text = environment(argv=True).get_template(template).render(**context)
    return [_restore(line.strip()) for line in text.splitlines() if line.strip()]
