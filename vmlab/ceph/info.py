"""How clients reach a Ceph cluster: ClusterInfo, ImageRef, keyrings, QEMU's rbd: filename."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import HostError, VmlabError

CLIENT_ID = "admin"
# QEMU's rbd: filename: a backslash escapes the next character; these would split a token.
_QEMU_VALUE_SPECIAL = "\\:"
_QEMU_NAME_SPECIAL = "\\:/="


def read_key(keyring: Path, entity: str) -> bytes:
    """The secret of ``entity`` (e.g. ``client.admin``) in a Ceph keyring, as raw bytes (what
    a libvirt ``ceph`` secret holds; the keyring has it base64-encoded)."""
    try:
        text = keyring.read_text()
    except OSError as exc:
        raise HostError(
            f"cannot read the Ceph keyring {keyring}: {exc.strerror}",
            hint="set backend.cluster.keyring to the client's keyring file",
        ) from exc
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == entity and "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            if name == "key":
                try:
                    return base64.b64decode(value, validate=True)
                except binascii.Error as exc:
                    raise HostError(
                        f"the key of {entity} in {keyring} is not base64", hint=str(exc)
                    ) from exc
    raise HostError(
        f"the Ceph keyring {keyring} has no key for {entity}",
        hint=f"check backend.cluster.client_id and keyring (`ceph auth get {entity}`)",
    )


@dataclass(frozen=True)
class ImageRef:
    """An RBD image: ``pool/name``; ``parent`` is ``pool/image@snap`` for a clone."""

    pool: str
    name: str
    size_bytes: int
    parent: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.name}"


@dataclass(frozen=True)
class ClusterInfo:
    """How a client reaches the cluster. Holds paths only: key material stays in the keyring."""

    conf_path: Path
    keyring_path: Path
    fsid: str
    mon_addr: str  # the ``mon host`` value, e.g. [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
    pool: str
    state_dir: Path
    client_id: str = CLIENT_ID
    netns: str | None = None

    def __repr__(self) -> str:
        return (
            f"ClusterInfo(fsid={self.fsid!r}, mon_addr={self.mon_addr!r}, pool={self.pool!r}, "
            f"conf_path={str(self.conf_path)!r}, client_id={self.client_id!r}, "
            f"keyring_path={str(self.keyring_path)!r}, netns={self.netns!r})"
        )

    __str__ = __repr__

    def ceph_args(self) -> list[str]:
        """The connection options every ``ceph``/``rbd``/``rados`` call needs."""
        return [
            "--conf", str(self.conf_path),
            "--id", self.client_id,
            "--keyring", str(self.keyring_path),
        ]  # fmt: skip

    def qemu_rbd_uri(self, pool: str, image: str) -> str:
        """QEMU's legacy filename ``rbd:pool/image:conf=/path/ceph.conf:id=admin``.

        QEMU splits this string at ``/``, ``@``, ``:`` and ``=``; a backslash escapes the next
        character (``\\:``), so a ``:`` (or ``\\``) inside a path or name is escaped here, and a
        ``/`` or ``=`` inside the pool or image name too. An ``@`` anywhere after the pool cannot
        be expressed (QEMU looks for a snapshot with a plain ``strchr``): that raises; use
        ``-blockdev driver=rbd,...`` (as vmlab's QEMU templates do) instead. Commas are not
        escaped here: where this string becomes a QEMU option value (``-drive file=...``) the
        caller doubles them (``,`` -> ``,,``); as a plain qemu-img argument it is used as is.
        """
        for what, text in (("image", image), ("conf path", str(self.conf_path))):
            if "@" in text:
                raise VmlabError(
                    f"an '@' in the {what} {text!r} cannot be written in QEMU's rbd: filename",
                    hint="use -blockdev driver=rbd,pool=...,image=...,conf=... instead",
                )
        pool_part = _qemu_escape(pool, _QEMU_NAME_SPECIAL + "@")
        image_part = _qemu_escape(image, _QEMU_NAME_SPECIAL)
        conf_part = _qemu_escape(str(self.conf_path), _QEMU_VALUE_SPECIAL)
        id_part = _qemu_escape(self.client_id, _QEMU_VALUE_SPECIAL)
        return f"rbd:{pool_part}/{image_part}:conf={conf_part}:id={id_part}"


def _qemu_escape(text: str, special: str) -> str:
    return "".join(f"\\{c}" if c in special else c for c in text)
