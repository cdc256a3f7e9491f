"""The seed on a disk: an ISO 9660 image labelled ``cidata`` (Joliet + Rock Ridge), written
and read by pycdlib."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pycdlib

from vmlab.guest.cloudinit.config import SEED_LABEL, SeedConfig, SeedFiles
from vmlab.guest.cloudinit.seed import render_seed, validate_seed

log = logging.getLogger(__name__)

# ISO 9660 level-1 names (8.3, upper case); Linux shows the Rock Ridge / Joliet names.
_ISO_NAMES = {"user-data": "USERDATA.;1", "meta-data": "METADATA.;1", "network-config": "NETCFG.;1"}


def write_seed_iso(files: SeedFiles, dest: Path) -> Path:
    """Write the seed as an ISO 9660 image labelled ``cidata`` (Joliet + Rock Ridge)."""
    validate_seed(files)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, text in files.as_dict().items():
            data = text.encode()
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/{_ISO_NAMES[name]}",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(str(tmp))
    finally:
        iso.close()
    tmp.replace(dest)
    log.debug("wrote NoCloud seed %s", dest)
    return dest


def read_seed_iso(path: Path) -> tuple[str, dict[str, str]]:
    """(volume label, {Rock Ridge name: text}) of a seed ISO: what a guest's kernel shows."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        out: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
    finally:
        iso.close()
    return label, out


def make_seed(config: SeedConfig, dest: Path) -> Path:
    """Render, validate and write the seed ISO in one go; also keeps the rendered files beside
    it (``<dest>.d/``) so a failed boot can be debugged from the run directory."""
    files = render_seed(config)
    rendered = dest.with_name(dest.name + ".d")
    rendered.mkdir(parents=True, exist_ok=True)
    for name, text in files.as_dict().items():
        # The host key's private half stays in the ISO only.
        shown = re.sub(r'"-----BEGIN OPENSSH PRIVATE KEY-----[^"]*"', '"<redacted>"', text)
        (rendered / name).write_text(shown)
    return write_seed_iso(files, dest)
