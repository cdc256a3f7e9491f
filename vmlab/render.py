"""Render a planned case into what runs: a QEMU argv (one token per template line).

Templates live in templates/ and are rendered with StrictUndefined, so a missing value is an
error at render time, never an empty string in an argv.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vmlab.plan import Case
from vmlab.resources import templates_dir
from vmlab.spec import Disk


def qemu_quote(value: object) -> str:
    """Escape a value for QEMU's key=value,key=value option syntax: ',' becomes ',,'."""
    return str(value).replace(",", ",,")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml",), default=False),
        keep_trailing_newline=True,
    )
    env.filters["q"] = qemu_quote
    return env


def render_text(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_argv(template: str, **context: Any) -> list[str]:
    """Render a template that emits one argv token per line (blank lines are dropped)."""
    return [line.strip() for line in render_text(template, **context).splitlines() if line.strip()]


@dataclass(frozen=True)
class CacheFlags:
    """QEMU's -drive cache= shorthand spelled out for -blockdev and -device (QEMU docs table)."""

    direct: str
    no_flush: str
    write_cache: str


_CACHE_MODES = {
    "none": CacheFlags("on", "off", "on"),
    "directsync": CacheFlags("on", "off", "off"),
    "writeback": CacheFlags("off", "off", "on"),
    "writethrough": CacheFlags("off", "off", "off"),
    "unsafe": CacheFlags("off", "on", "on"),
}


@dataclass(frozen=True)
class BootImage:
    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True)
class GuestRuntime:
    """Where one launched guest keeps its sockets and logs, and how to reach it."""

    qmp_socket: Path
    serial_log: Path
    pidfile: Path
    ssh_port: int


@dataclass(frozen=True)
class RenderedDisk:
    disk: Disk
    path: Path
    cache: CacheFlags
    node: str
    throttle_limits: Sequence[tuple[str, int]]


@dataclass(frozen=True)
class Rendered:
    """Everything needed to launch a case; saved to the run directory before it runs."""

    case_id: str
    argv: list[str]
    accel: str


def _rendered_disk(disk: Disk, path: Path) -> RenderedDisk:
    limits: list[tuple[str, int]] = []
    node = f"fmt-{disk.name}"
    if disk.throttle is not None:
        node = f"disk-{disk.name}"
        for field, key in (
            ("iops_total", "x-iops-total"),
            ("iops_read", "x-iops-read"),
            ("iops_write", "x-iops-write"),
            ("bps_total", "x-bps-total"),
        ):
            value = getattr(disk.throttle, field)
            if value is not None:
                limits.append((key, value))
    return RenderedDisk(disk, path, _CACHE_MODES[disk.cache], node, limits)


def mac_address(seed: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from a name."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def render_qemu(
    case: Case,
    *,
    qemu: str,
    accel: str,
    boot: BootImage,
    disk_paths: Mapping[str, Path],
    runtime: GuestRuntime,
) -> Rendered:
    guest = case.variant.guest
    cpu_model = guest.cpu_model or ("host" if accel == "kvm" else "max")
    argv = render_argv(
        "qemu/guest.argv.j2",
        qemu=qemu,
        name=f"vmlab-{case.id}",
        guest=guest,
        accel=accel,
        cpu_model=cpu_model,
        boot=boot,
        rt=runtime,
        mgmt_mac=mac_address(case.id),
        disks=[_rendered_disk(d, disk_paths[d.name]) for d in guest.disks],
    )
    return Rendered(case_id=case.id, argv=argv, accel=accel)
