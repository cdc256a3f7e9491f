"""The cases the golden files pin, and the fixed disk sources both renderers use for them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vmlab.plan import Case, plan
from vmlab.render.model import DiskSource
from vmlab.spec import BenchSpec, default_lab, load_spec
from vmlab.storage import preview_disks
from vmlab.storage.backing import PreviewBacking

DATA = Path(__file__).parent.parent / "data"


def golden_specs() -> list[tuple[str, BenchSpec]]:
    specs = [("default-lab", default_lab())]
    specs += [(p.stem, load_spec(p)) for p in sorted((DATA / "specs").glob("*.yaml"))]
    return specs


def golden_cases() -> list[tuple[str, Case]]:
    return [(name, case) for name, spec in golden_specs() for case in plan(spec)]


def fixed_sources(case: Case) -> dict[str, DiskSource]:
    """Disk sources as the bench would resolve them, with fixed sidecar sockets, WWPNs and
    secret files."""
    previews = preview_disks(case, PreviewBacking(Path("/scratch")))
    sources = {}
    for d in case.variant.guest.disks:
        source = previews[d.name].source
        if source.rbd is not None:
            key = Path(f"/run/secrets/rbd-{d.name}.key")
            source = replace(source, rbd=replace(source.rbd, key_file=key))
        if d.served_by in ("qsd", "spdk"):
            source = replace(source, socket=Path(f"/run/{d.served_by}-{d.name}/vhost-user.sock"))
        elif d.served_by == "lio":
            source = replace(source, wwpn="naa.5001405abcdef012")
        sources[d.name] = source
    return sources
