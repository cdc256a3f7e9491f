"""The cases the golden files pin, and the fixed disk sources both renderers use for them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vmlab.disks import ScratchDisks, local_source
from vmlab.plan import Case, plan
from vmlab.render import DiskSource
from vmlab.spec import BenchSpec, default_lab, load_spec

DATA = Path(__file__).parent.parent / "data"


def golden_specs() -> list[tuple[str, BenchSpec]]:
    specs = [("default-lab", default_lab())]
    specs += [(p.stem, load_spec(p)) for p in sorted((DATA / "specs").glob("*.yaml"))]
    return specs


def golden_cases() -> list[tuple[str, Case]]:
    return [(name, case) for name, spec in golden_specs() for case in plan(spec)]


def fixed_sources(case: Case) -> dict[str, DiskSource]:
    """Disk sources as the bench would resolve them, with fixed sidecar sockets and WWPNs."""
    scratch = ScratchDisks(Path("/scratch"), dry_run=True)
    sources = {}
    for d in case.variant.guest.disks:
        source = local_source(case, d, scratch)
        if d.served_by in ("qsd", "spdk"):
            source = replace(source, socket=Path(f"/run/{d.served_by}-{d.name}/vhost-user.sock"))
        elif d.served_by == "lio":
            source = replace(source, wwpn="naa.5001405abcdef012")
        sources[d.name] = source
    return sources
