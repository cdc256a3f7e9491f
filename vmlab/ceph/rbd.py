"""RBD images through the ``rbd`` CLI (with --conf/--id/--keyring), and krbd mapping.

The CLI, not python3-rbd: Debian's python3-rbd is built for /usr/bin/python3, not for a venv's
interpreter. Every image vmlab makes is recorded in ``images.json`` in the cluster's state dir,
and ``remove`` deletes only what is recorded there: an image someone else made in the same pool
is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmlab.ceph.info import ClusterInfo, ImageRef
from vmlab.ceph.proc import rbd_cli
from vmlab.errors import CommandError, HostError, VmlabError
from vmlab.proc import run

log = logging.getLogger(__name__)

_OP_TIMEOUT_S = 30
REGISTRY_NAME = "images.json"
SYS_BUS_RBD = Path("/sys/bus/rbd")


@dataclass
class _Registry:
    images: list[ImageRef] = field(default_factory=list)

    def find(self, pool: str, name: str) -> ImageRef | None:
        return next((i for i in self.images if (i.pool, i.name) == (pool, name)), None)

    def to_json(self) -> str:
        return json.dumps({"images": [asdict(i) for i in self.images]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> _Registry:
        data = json.loads(text) if text.strip() else {}
        return cls(images=[ImageRef(**i) for i in data.get("images", [])])


class RbdImages:
    """Create and remove RBD images of one cluster, remembering what vmlab made."""

    def __init__(self, info: ClusterInfo, *, timeout_s: float = 60.0) -> None:
        self._info = info
        self._timeout_s = timeout_s
        self._registry_path = info.state_dir / REGISTRY_NAME

    # ---- queries

    def get(self, pool: str, name: str) -> ImageRef | None:
        """The image as the cluster sees it, or None if it does not exist."""
        try:
            out = self._rbd(["info", "--format", "json", f"{pool}/{name}"], what="rbd info")
        except CommandError as exc:
            if exc.returncode == 2 and "No such file" in exc.output:  # ENOENT
                return None
            raise
        data = json.loads(out)
        parent = data.get("parent")
        parent_spec = None
        if isinstance(parent, dict):
            parent_spec = f"{parent['pool']}/{parent['image']}@{parent['snapshot']}"
        return ImageRef(pool, name, int(data["size"]), parent_spec)

    # ---- changes

    def create(self, pool: str, name: str, size_bytes: int) -> ImageRef:
        if size_bytes <= 0 or size_bytes % 512:
            raise VmlabError(
                f"image size {size_bytes} B is not a positive multiple of 512",
                hint="QEMU addresses disks in 512-byte sectors",
            )
        self._rbd(["create", "--size", f"{size_bytes}B", f"{pool}/{name}"], what="rbd create")
        ref = ImageRef(pool, name, size_bytes)
        with self._registry() as reg:
            reg.images.append(ref)
        log.info("created rbd image %s (%s bytes)", ref.spec, size_bytes)
        return ref

    def ensure(self, pool: str, name: str, size_bytes: int) -> ImageRef:
        """The existing image (whatever made it, whatever its size), or a new one."""
        existing = self.get(pool, name)
        if existing is not None:
            if existing.size_bytes < size_bytes:
                log.warning(
                    "rbd image %s exists with %s bytes (< %s requested)",
                    existing.spec,
                    existing.size_bytes,
                    size_bytes,
                )
            return existing
        return self.create(pool, name, size_bytes)

    def remove(self, pool: str, name: str) -> None:
        """Remove an image vmlab created; refuses images vmlab did not create."""
        with self._registry() as reg:
            ref = reg.find(pool, name)
        if ref is None:
            raise VmlabError(
                f"rbd image {pool}/{name} was not created by vmlab: not removing it",
                hint="remove it yourself with `rbd rm` if it is really expendable",
            )
        if self.get(pool, name) is not None:
            self._rbd(["rm", "--no-progress", ref.spec], what="rbd rm")
        with self._registry() as reg:
            reg.images = [i for i in reg.images if (i.pool, i.name) != (pool, name)]
        log.info("removed rbd image %s", ref.spec)

    # ---- krbd

    def map_krbd(self, pool: str, name: str) -> Path:
        """Map an image through the kernel RBD driver (root only); returns /dev/rbdN.

        A map that fails or runs out of time after the kernel mapped the image (waiting for
        udev, say) is unmapped before the error goes on: nothing is left holding a watch."""
        krbd_preflight()
        try:
            out = self._rbd(
                ["device", "map", *_udev_options(), f"{pool}/{name}"], what="rbd device map"
            )
        except VmlabError:
            for device in krbd_devices(pool, name):
                log.warning("unmapping %s, which the failed map of %s/%s left", device, pool, name)
                with contextlib.suppress(VmlabError):
                    self.unmap_krbd(device)
            raise
        device = Path(out.strip().splitlines()[-1])
        log.info("mapped %s/%s at %s", pool, name, device)
        return device

    def unmap_krbd(self, device: Path) -> None:
        self._rbd(["device", "unmap", *_udev_options(), str(device)], what="rbd device unmap")

    # ---- helpers

    def _rbd(self, args: Sequence[str], *, what: str) -> str:
        return rbd_cli(
            self._info,
            [f"--rados-osd-op-timeout={_OP_TIMEOUT_S}", *args],
            what=what,
            timeout_s=self._timeout_s,
        )

    @contextlib.contextmanager
    def _registry(self) -> Iterator[_Registry]:
        """Read-modify-write of images.json under an exclusive flock of images.json.lock.

        The lock lives in its own file: images.json is replaced by rename, so a lock on it
        would guard an inode that is no longer the registry.
        """
        path = self._registry_path
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                before = path.read_text()
            except FileNotFoundError:
                before = ""
            try:
                reg = _Registry.from_json(before)
            except (ValueError, TypeError, KeyError) as exc:
                raise VmlabError(
                    f"{path} is damaged: {exc}", hint="fix or delete it (vmlab forgets its images)"
                ) from exc
            yield reg
            after = reg.to_json()
            if after != before:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(after)
                tmp.replace(path)
        finally:
            os.close(fd)


UDEV_CONTROL = Path("/run/udev/control")  # udevd's control socket: there while it runs


def _udev_options() -> list[str]:
    """``rbd device map`` waits for udev's event of the new device; where no udevd runs
    (containers, an init without it, vmlab's L1 host) that wait never ends: noudev."""
    return [] if UDEV_CONTROL.exists() else ["--options", "noudev"]


def krbd_devices(pool: str, name: str) -> list[Path]:
    """The /dev/rbdN that map ``pool/name`` now, read from sysfs (no rbd CLI, no udev)."""
    found = []
    for entry in sorted((SYS_BUS_RBD / "devices").glob("*")):
        try:
            mapped = ((entry / "pool").read_text().strip(), (entry / "name").read_text().strip())
        except OSError:
            continue  # unmapped while we looked
        if mapped == (pool, name):
            found.append(Path(f"/dev/rbd{entry.name}"))
    return found


def krbd_preflight(*, timeout_s: float = 15.0) -> None:
    """Raise HostError unless the kernel RBD driver is there (loading it with modprobe)."""
    if SYS_BUS_RBD.is_dir():
        return
    why = ""
    try:
        done = run(["modprobe", "rbd"], timeout_s=timeout_s, check=False)
        why = (done.err or done.out).strip() or f"exit {done.returncode}"
    except HostError:
        why = "modprobe is not installed (apt-get install kmod)"
    except CommandError:  # with check=False: only when it outlives timeout_s
        why = f"modprobe did not finish in {timeout_s:.0f} s"
    if SYS_BUS_RBD.is_dir():
        return
    raise HostError(
        f"kernel RBD (krbd) is unavailable: /sys/bus/rbd is absent and `modprobe rbd` "
        f"failed: {why}",
        hint=(
            f"krbd needs the rbd module of the running kernel ({os.uname().release}): install "
            "its modules package (Debian: linux-image-$(uname -r)) or use a kernel with "
            "CONFIG_BLK_DEV_RBD, and map as root. Without it, drop backend.krbd: QEMU's "
            "librbd driver (ClusterInfo.qemu_rbd_uri names an image to qemu-img) and "
            "qemu-storage-daemon need no kernel module"
        ),
    )
