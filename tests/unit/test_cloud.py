"""Cloud image sources (path, URL through a local http.server), guest facts, rootfs recipe."""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmlab.errors import GuestError, HostError, SpecError
from vmlab.guest import cloud, rootfs
from vmlab.guest.image import GuestImage
from vmlab.guest.ssh import CommandResult
from vmlab.resources import templates_dir

PAYLOAD = b"QFI\xfb" + bytes(range(256)) * 300  # looks like a qcow2 header; content is opaque


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- local paths ------------------------------------------------------------------------------


def test_local_path_is_used_as_is(tmp_path: Path) -> None:
    image = tmp_path / "debian.qcow2"
    image.write_bytes(PAYLOAD)
    assert cloud.resolve_cloud_image(str(image), sha256=None) == image.resolve()
    assert cloud.resolve_cloud_image(str(image), sha256=sha(PAYLOAD).upper()) == image.resolve()
    assert cloud.resolve_cloud_image(str(image), sha256="sha256:" + sha(PAYLOAD)) == image
    assert image.read_bytes() == PAYLOAD  # never rewritten


def test_local_path_errors(tmp_path: Path) -> None:
    image = tmp_path / "debian.qcow2"
    image.write_bytes(PAYLOAD)
    with pytest.raises(HostError, match="does not match") as info:
        cloud.resolve_cloud_image(str(image), sha256=sha(b"other"))
    assert info.value.hint
    with pytest.raises(HostError, match="does not exist"):
        cloud.resolve_cloud_image(str(tmp_path / "missing.qcow2"), sha256=None)
    with pytest.raises(SpecError, match="sha256"):
        cloud.resolve_cloud_image(str(image), sha256="abc")


# --- URLs: a real HTTP server on 127.0.0.1 ------------------------------------------------------


@dataclass
class Server:
    url: str
    hits: list[str]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "debian-12.qcow2").write_bytes(PAYLOAD)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path == "/truncated.qcow2":  # promises more than it sends
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD) * 2))
                self.end_headers()
                self.wfile.write(PAYLOAD)
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_url_is_downloaded_verified_and_cached(http_server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"{http_server.url}/debian-12.qcow2"
    got = cloud.resolve_cloud_image(url, sha256=sha(PAYLOAD), cache_root=cache)
    assert got.name == "debian-12.qcow2"
    assert got.read_bytes() == PAYLOAD
    assert cache in got.parents
    again = cloud.resolve_cloud_image(url, sha256=sha(PAYLOAD), cache_root=cache)
    assert again == got
    assert http_server.hits == ["/debian-12.qcow2"]  # the second call used the cache
    assert not list(got.parent.glob(".*.part"))


def test_corrupt_cached_copy_is_downloaded_again(http_server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"{http_server.url}/debian-12.qcow2"
    got = cloud.resolve_cloud_image(url, sha256=None, cache_root=cache)
    got.write_bytes(b"bit rot")
    assert cloud.resolve_cloud_image(url, sha256=sha(PAYLOAD), cache_root=cache) == got
    assert got.read_bytes() == PAYLOAD
    assert len(http_server.hits) == 2


def test_url_checksum_mismatch_leaves_nothing(http_server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(HostError, match="does not match"):
        cloud.resolve_cloud_image(
            f"{http_server.url}/debian-12.qcow2", sha256=sha(b"x"), cache_root=cache
        )
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_url_errors(http_server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(HostError, match="HTTP 404"):
        cloud.resolve_cloud_image(f"{http_server.url}/nope.qcow2", sha256=None, cache_root=cache)
    with pytest.raises(HostError, match="stopped after"):
        cloud.resolve_cloud_image(
            f"{http_server.url}/truncated.qcow2", sha256=None, cache_root=cache
        )
    # A port on loopback where nothing listens: connection refused, a clear error.
    with pytest.raises(HostError, match="cannot download"):
        cloud.resolve_cloud_image("http://127.0.0.1:9/x.qcow2", sha256=None, cache_root=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


# --- guest facts ------------------------------------------------------------------------------

FACTS = """kernel 6.1.0-56-cloud-amd64
distro Debian GNU/Linux 12 (bookworm)
fio fio-3.33
cpus 2
memory_kib 996344
disk vmlab-root /dev/vda 2 0000:00:03.0
disk vmlab-data /dev/vdb 4 0000:00:04.0
disk - /dev/vdc 1 0000:00:11.0
"""


def test_parse_facts() -> None:
    facts = cloud.parse_facts(FACTS)
    assert facts.kernel == "6.1.0-56-cloud-amd64"
    assert facts.distro == "Debian GNU/Linux 12 (bookworm)"
    assert facts.fio == "fio-3.33"
    assert (facts.cpus, facts.memory_kib) == (2, 996344)
    assert facts.by_serial("vmlab-data") == cloud.GuestDisk(
        "/dev/vdb", "vmlab-data", 4, "0000:00:04.0"
    )
    assert facts.disks[2].serial is None
    assert facts.as_dict()["disks"]["/dev/vdc"] == {
        "serial": None,
        "queues": 1,
        "pci": "0000:00:11.0",
    }
    with pytest.raises(GuestError, match="no disk has serial"):
        facts.by_serial("vmlab-nvme")
    twice = cloud.parse_facts(FACTS + "disk vmlab-data /dev/vdd 1 0000:00:05.0\n")
    with pytest.raises(GuestError, match="several"):
        twice.by_serial("vmlab-data")


def test_collect_facts_sends_the_script_on_stdin() -> None:
    seen: dict[str, object] = {}

    class SSH:
        where = "guest"

        def run(
            self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
        ) -> CommandResult:
            seen.update(command=command, stdin=stdin)
            return CommandResult(command, 0, FACTS.encode(), b"")

    facts = cloud.collect_facts(SSH())  # type: ignore[arg-type]
    assert seen["command"] == "sh -s"
    assert seen["stdin"] == (templates_dir() / "guest" / "facts.sh").read_bytes()
    assert facts.by_serial("vmlab-root").device == "/dev/vda"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_facts_script_runs_under_this_sh() -> None:
    """facts.sh uses only POSIX sh + coreutils/grep/awk (dash here, busybox ash in the
    default guest): it runs on the host too and prints the keys the parser reads."""
    script = (templates_dir() / "guest" / "facts.sh").read_bytes()
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, check=True, timeout=60)
    facts = cloud.parse_facts(out.stdout.decode())
    assert facts.kernel and facts.cpus and facts.memory_kib


# --- the rootfs recipe (no build here: that needs root and mmdebstrap) ---------------------


def test_rootfs_variants_and_packages() -> None:
    assert rootfs.variant_name(systemd=False, cloud_init=False) == "minimal"
    assert rootfs.variant_name(systemd=True, cloud_init=False) == "systemd"
    assert rootfs.variant_name(systemd=True, cloud_init=True) == "cloud"
    with pytest.raises(HostError, match="needs systemd"):
        rootfs.variant_name(systemd=False, cloud_init=True)
    minimal = rootfs.rootfs_packages("minimal")
    assert {"openssh-server", "fio", "iproute2", "busybox"} <= set(minimal)
    assert "systemd-sysv" not in minimal
    assert "cloud-init" not in rootfs.rootfs_packages("systemd")
    assert {"systemd-sysv", "udev", "cloud-init"} <= set(rootfs.rootfs_packages("cloud"))


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("render", [rootfs.render_initrd_init, rootfs.render_rootfs_init])
def test_rootfs_scripts_render_and_parse(render: object, tmp_path: Path) -> None:
    assert callable(render)
    text = render()
    assert isinstance(text, str) and text.startswith("#!/bin/sh\n")
    assert "{{" not in text and "{%" not in text
    script = tmp_path / "init"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)  # syntax only


def test_rootfs_initrd_defaults() -> None:
    text = rootfs.render_initrd_init()
    assert f'root="LABEL={rootfs.ROOT_LABEL}"' in text
    assert "switch_root /newroot" in text
    assert rootfs.FAILED_MARKER in text


def fake_image(root: Path, key: str, kernel_sha: str = "aa") -> GuestImage:
    root.mkdir(parents=True, exist_ok=True)
    packages = [
        {"package": "linux-image-6.1.0-56-cloud-amd64", "version": "6.1.192-2",
         "deb": "linux.deb", "sha256": kernel_sha},
        {"package": "busybox-static", "version": "1:1.35.0-4", "deb": "bb.deb", "sha256": "bb"},
        {"package": "fio", "version": "3.33-3", "deb": "fio.deb", "sha256": "cc"},
    ]  # fmt: skip
    (root / "manifest.json").write_text(json.dumps({"packages": packages}))
    return GuestImage(
        root=root, key=key, kernel=root / "vmlinux", initrd=root / "i",
        cmdline="", ready_marker="R", failed_marker="F", host_key="", user="root",
        kernel_version="6.1", fio_version="fio-3.33", min_memory_mib=384,
    )  # fmt: skip


def test_rootfs_key_changes_with_what_goes_in(tmp_path: Path) -> None:
    image = fake_image(tmp_path / "a", "feedface")
    versions = {"fio": "3.33-3"}

    def key(img: GuestImage, variant: str, vers: dict[str, str], sources: str) -> str:
        return rootfs.compute_key(rootfs.key_material(img, variant, vers, sources))

    base = key(image, "cloud", versions, "deb x")
    # Another default image (its init changed) with the same kernel and busybox: same rootfs.
    assert base == key(fake_image(tmp_path / "b", "beefcafe"), "cloud", versions, "deb x")
    others = {
        key(image, "minimal", versions, "deb x"),
        key(image, "cloud", {"fio": "3.34"}, "deb x"),
        key(image, "cloud", versions, "deb y"),
        key(fake_image(tmp_path / "c", "feedface", kernel_sha="dd"), "cloud", versions, "deb x"),
    }
    assert base not in others and len(others) == 4
    assert rootfs.source_packages(image)["linux-image"]["version"] == "6.1.192-2"


def test_root_disk_args() -> None:
    args = rootfs.root_disk_args(Path("/r/a,b.qcow2"))
    assert args[1] == "driver=file,node-name=root-file,filename=/r/a,,b.qcow2"
    assert args[3] == "driver=qcow2,node-name=root,file=root-file"
    assert args[5] == "virtio-blk-pci,id=dev-root,drive=root,serial=vmlab-root"
    assert rootfs.root_disk_args(Path("/r.raw"), fmt="raw", bootindex=0)[5].endswith(",bootindex=0")


def test_incomplete_rootfs_image_is_not_loaded(tmp_path: Path) -> None:
    broken = tmp_path / "rootfs" / "0123456789abcdef"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text('{"format": 1, "key": "0123456789abcdef"}')
    assert rootfs._load(broken) is None


def test_mounts_under_reads_mountinfo(tmp_path: Path) -> None:
    assert rootfs.mounts_under(tmp_path) == []  # nothing is mounted in a fresh temp dir
    everything = rootfs.mounts_under(Path("/"))
    assert everything[-1] == Path("/")  # deepest first, the root last
    assert all(len(a.parts) >= len(b.parts) for a, b in itertools.pairwise(everything))
