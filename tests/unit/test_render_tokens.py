"""A value cannot split into more argv tokens, nor change in libvirt XML, whatever it holds.

The spec edge refuses control characters (tests/unit/test_spec_input.py); these tests hand the
renderers values that skipped it (``model_copy`` does not validate) and check that each still
comes out as exactly one token, unchanged — the renderer's own guarantee.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from golden_cases import fixed_sources
from test_render import fixed_render
from test_render_libvirt import fixed_xml

from vmlab.plan import Case, plan
from vmlab.render import render_argv
from vmlab.render.model import DiskSource
from vmlab.render.qemu import render_qemu
from vmlab.spec import default_lab

NASTY = "a\n-device\nfoo,x=1 \t'\"<&>$(id);..\r\u0085 "


def with_guest(case: Case, **update: Any) -> Case:
    guest = case.variant.guest.model_copy(update=update)
    return dataclasses.replace(case, variant=case.variant.model_copy(update={"guest": guest}))


def default_case() -> Case:
    return plan(default_lab())[0]


@pytest.mark.parametrize("field", ["machine", "cpu_model", "kernel_args"])
def test_a_guest_value_stays_one_token(field: str) -> None:
    case = default_case()
    clean = fixed_render(case)
    argv = fixed_render(with_guest(case, **{field: NASTY}))
    assert len(argv) == len(clean)
    assert any(NASTY in t or NASTY.replace(",", ",,") in t for t in argv)  # |q or whole


def test_a_disk_path_stays_one_token_with_its_own_spaces() -> None:
    case = default_case()
    clean = fixed_render(case)
    sources = fixed_sources(case)
    path = Path(f" {NASTY}")
    sources = {n: dataclasses.replace(s, path=path) for n, s in sources.items()}
    rt_argv = render_qemu(
        case,
        qemu="qemu-system-x86_64",
        accel="tcg",
        boot=_boot(),
        disks=sources,
        runtime=_runtime(),
    ).argv
    assert len(rt_argv) == len(clean)
    (blockdev,) = [t for t in rt_argv if t.startswith("driver=file,node-name=file-data")]
    assert f"filename= {NASTY.replace(',', ',,')}," in blockdev


def test_an_empty_value_is_still_a_token() -> None:
    case = default_case()
    clean = fixed_render(case)
    argv = fixed_render(with_guest(case, cpu_model=""))
    # an empty cpu_model falls back to max; an empty value where one is required stays a token
    assert argv == clean
    assert render_argv("qemu/guest.argv.j2", **_context(case, qemu=""))[0] == ""


def test_libvirt_xml_gives_back_the_values_it_was_given() -> None:
    case = default_case()
    value = "quiet\tconsole=ttyS0\nx='1' \"y\" <z> &amp;"
    root = ET.fromstring(fixed_xml(with_guest(case, kernel_args=value)))
    cmdline = root.findtext("os/cmdline") or ""
    assert cmdline.endswith(value)
    machine = "q35\n\tx"
    root = ET.fromstring(fixed_xml(with_guest(case, machine=machine)))
    (os_type,) = root.iterfind("os/type")
    assert os_type.attrib["machine"] == machine  # not "q35  x": no attribute normalisation


# --- helpers -----------------------------------------------------------------------------------


def _boot() -> Any:
    from vmlab.render.model import BootImage

    return BootImage(Path("/img/vmlinux"), Path("/img/initrd.img"), "console=ttyS0 vmlab.x=1")


def _runtime() -> Any:
    from vmlab.render.model import GuestRuntime

    return GuestRuntime(
        qmp_socket=Path("/run/g/qmp.sock"),
        serial_log=Path("/r/serial.log"),
        pidfile=Path("/run/g/qemu.pid"),
        ssh_port=40022,
        nics=[],
    )


def _context(case: Case, *, qemu: str) -> dict[str, Any]:
    from vmlab.render.qemu import rendered_disk

    sources: dict[str, DiskSource] = fixed_sources(case)
    guest = case.variant.guest
    return {
        "qemu": qemu,
        "name": f"vmlab-{case.id}",
        "guest": guest,
        "accel": "tcg",
        "cpu_model": "max",
        "boot": _boot(),
        "rt": _runtime(),
        "mgmt_mac": "52:54:00:00:00:01",
        "memory": None,
        "hostdevs": [],
        "hostdev_slot": str,
        "disks": [rendered_disk(i, d, sources[d.name]) for i, d in enumerate(guest.disks)],
    }
