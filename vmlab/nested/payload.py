"""What L1 gets besides its image, on a read-only disk made per run (``mkfs.ext4 -d``, no loop
mount): *this* vmlab (the package and its templates), the Python libraries it imports (copied
from the interpreter running vmlab: L1 is Debian 12 with the same Python minor version, so
binary wheels work), the L2 guest image the host built, and the inner spec.

    payload/
      src/vmlab/  src/templates/    this vmlab, as a source checkout (PYTHONPATH=src)
      site/                         its libraries (PYTHONPATH=site)
      l2/<key>/                     the default guest image (VMLAB_GUEST_IMAGE)
      spdk/bin/vhost  spdk/lib/     the host's SPDK build, when a case needs it: L1 links it
                                    at the host's prefix (its RUNPATH), VMLAB_SPDK names it
      spec.yaml  plan.json          the inner spec, the L1 plan

Nothing here goes into the L1 image's cache key: a change to vmlab never rebuilds L1.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from vmlab import proc, resources
from vmlab.errors import HostError
from vmlab.guest.image import GuestImage

PAYLOAD_LABEL = "vmlab-payload"
PAYLOAD_SERIAL = "vmlab-payload"
HEADROOM_BYTES = 64 << 20
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _requirements() -> list[str]:
    """vmlab's runtime requirements: the checkout's pyproject.toml, else the installed wheel's."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    return list(metadata.requires("vmlab") or [])


def _applies(requirement: Requirement) -> bool:
    """Needed here: no extra, and its marker (python_version, platform...) holds."""
    marker = requirement.marker
    return marker is None or marker.evaluate({"extra": ""})


def distributions() -> list[metadata.Distribution]:
    """The installed distributions vmlab needs at run time, dependencies included."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [r.name for r in map(Requirement, _requirements()) if _applies(r)]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise HostError(
                f"vmlab needs the Python package {name}, which is not installed",
                hint="reinstall vmlab with its dependencies (scripts/setup)",
            ) from exc
        seen[name] = dist
        todo += [r.name for r in map(Requirement, dist.requires or []) if _applies(r)]
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def library_files() -> Iterator[tuple[Path, str]]:
    """(file, path under site/) of every file of those distributions inside site-packages."""
    for dist in distributions():
        for item in dist.files or []:
            path = Path(str(dist.locate_file(item)))
            if ".." in item.parts or item.suffix == ".pyc" or not path.is_file():
                continue  # console scripts in bin/, byte code
            yield path, item.as_posix()


def write_tree(
    tree: Path, *, l2: GuestImage, spec_text: str, plan_json: str, spdk: Path | None = None
) -> None:
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, tree / "src/vmlab", ignore=_IGNORED)
    shutil.copytree(resources.templates_dir(), tree / "src/templates", ignore=_IGNORED)
    for src, rel in library_files():
        dest = tree / "site" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    # Under its key: an image directory is only taken for the key its manifest names.
    shutil.copytree(l2.root, tree / "l2" / l2.root.name, ignore=shutil.ignore_patterns(".*"))
    if spdk is not None:  # bin/vhost and its libraries; not the headers nor the other tools
        (tree / "spdk/bin").mkdir(parents=True)
        shutil.copy2(spdk / "bin/vhost", tree / "spdk/bin/vhost")
        shutil.copytree(spdk / "lib", tree / "spdk/lib", symlinks=True, ignore=_IGNORED)
    (tree / "spec.yaml").write_text(spec_text)
    (tree / "plan.json").write_text(plan_json)
    (tree / "python.txt").write_text(f"{sys.version_info.major}.{sys.version_info.minor}\n")


def make_payload(
    workdir: Path,
    *,
    l2: GuestImage,
    spec_text: str,
    plan_json: str,
    spdk: Path | None = None,
    timeout_s: float = 600,
) -> Path:
    """The payload disk (raw ext4, labelled ``vmlab-payload``) in ``workdir``; ``spdk``: the
    install prefix of the SPDK build to carry."""
    tree = workdir / "payload"
    write_tree(tree, l2=l2, spec_text=spec_text, plan_json=plan_json, spdk=spdk)
    used = sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file())
    size_kib = (used + used // 8 + HEADROOM_BYTES) // 1024
    raw = workdir / "payload.raw"
    proc.run(
        ["mkfs.ext4", "-q", "-F", "-L", PAYLOAD_LABEL, "-d", tree, raw, f"{size_kib}k"],
        timeout_s=timeout_s,
        missing_hint="apt-get install e2fsprogs",
    )
    shutil.rmtree(tree)
    return raw


def make_scratch(workdir: Path, *, size_gib: int = 16, timeout_s: float = 300) -> Path:
    """An empty, sparse ext4 disk for L1's scratch files and results (not its root overlay)."""
    raw = workdir / "scratch.raw"
    with raw.open("wb") as f:
        f.truncate(size_gib << 30)
    proc.run(
        ["mkfs.ext4", "-q", "-F", "-L", "vmlab-scratch", raw],
        timeout_s=timeout_s,
        missing_hint="apt-get install e2fsprogs",
    )
    return raw


def make_nvme(workdir: Path, count: int, *, size_bytes: int = 1 << 30) -> tuple[Path, ...]:
    """Sparse raw drives behind L1's emulated NVMe controllers (VFIO passthrough to L2)."""
    drives = []
    for index in range(count):
        drive = workdir / f"nvme{index}.raw"
        with drive.open("wb") as f:
            f.truncate(size_bytes)
        drives.append(drive)
    return tuple(drives)
