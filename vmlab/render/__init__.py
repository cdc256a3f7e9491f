"""Rendering what runs from Jinja templates: QEMU argv (:mod:`vmlab.render.qemu`), libvirt domain
XML (:mod:`vmlab.render.libvirt`), and everything else vmlab writes from a template (fio job
files, guest init scripts, cloud-init seeds, reports) through the one environment here.

Templates live in templates/ and are rendered with StrictUndefined, so a missing value is an
error at render time, never an empty string in an argv. XML templates are autoescaped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from vmlab import resources
from vmlab.qemuopts import qemu_quote

Filter = tuple[str, Callable[..., Any]]


def environment(
    *, autoescape: bool = False, trim: bool = False, filters: tuple[Filter, ...] = ()
) -> jinja2.Environment:
    """The one Jinja environment factory: ``templates/`` as the loader, StrictUndefined (a
    missing value is an error, never an empty string), ``|q`` for QEMU option values (``,`` ->
    ``,,``) and any ``filters`` a caller adds. ``autoescape`` for XML and HTML; ``trim`` so
    block tags leave no blank lines (XML, Markdown). One environment per combination, made
    once."""
    return _environment(resources.templates_dir(), autoescape, trim, filters)


@functools.cache
def _environment(
    templates: Path, autoescape: bool, trim: bool, filters: tuple[Filter, ...]
) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,  # noqa: S701 - argv, shell and YAML must not be HTML-escaped
        keep_trailing_newline=True,
        trim_blocks=trim,
        lstrip_blocks=trim,
    )
    env.filters["q"] = qemu_quote
    env.filters.update(dict(filters))
    return env


def render_text(template: str, **context: Any) -> str:
    """A plain-text template (argv, fio job files, shell)."""
    return environment().get_template(template).render(**context)


def render_argv(template: str, **context: Any) -> list[str]:
    """Render a template that emits one argv token per line (blank lines are dropped)."""
    return [line.strip() for line in render_text(template, **context).splitlines() if line.strip()]
