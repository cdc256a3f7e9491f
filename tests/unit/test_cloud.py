"""Cloud image sources (path, URL through a local http.server), guest facts."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmlab.errors import GuestError, HostError, SpecError
from vmlab.guest import cloud
from vmlab.guest import facts as facts_mod
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
    facts = facts_mod.parse_facts(FACTS)
    assert facts.kernel == "6.1.0-56-cloud-amd64"
    assert facts.distro == "Debian GNU/Linux 12 (bookworm)"
    assert facts.fio == "fio-3.33"
    assert (facts.cpus, facts.memory_kib) == (2, 996344)
    assert facts.by_serial("vmlab-data") == facts_mod.GuestDisk(
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
    twice = facts_mod.parse_facts(FACTS + "disk vmlab-data /dev/vdd 1 0000:00:05.0\n")
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

    facts = facts_mod.collect_facts(SSH())  # type: ignore[arg-type]
    assert seen["command"] == "sh -s"
    assert seen["stdin"] == (templates_dir() / "guest" / "facts.sh").read_bytes()
    assert facts.by_serial("vmlab-root").device == "/dev/vda"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_facts_script_runs_under_this_sh() -> None:
    """facts.sh uses only POSIX sh + coreutils/grep/awk (dash here, busybox ash in the
    default guest): it runs on the host too and prints the keys the parser reads."""
    script = (templates_dir() / "guest" / "facts.sh").read_bytes()
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, check=True, timeout=60)
    facts = facts_mod.parse_facts(out.stdout.decode())
    assert facts.kernel and facts.cpus and facts.memory_kib


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_a_known_fio_version_is_reported_without_starting_fio(tmp_path: Path) -> None:
    """The default image's fio version is known from its build: the script takes it from the
    command line instead of starting fio (~0.6 s under TCG). A fake fio notes each start."""
    script = (templates_dir() / "guest" / "facts.sh").read_bytes()
    seen: dict[str, object] = {}

    class SSH:
        where = "guest"

        def run(
            self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
        ) -> CommandResult:
            seen["command"] = command
            env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}  # the fake fio first
            done = subprocess.run(
                ["sh", "-c", command], input=stdin, capture_output=True, env=env, check=False
            )
            return CommandResult(command, done.returncode, done.stdout, done.stderr)

    fake_fio = tmp_path / "fio"
    fake_fio.write_text("#!/bin/sh\necho started >> " + str(tmp_path / "ran") + "\n")
    fake_fio.chmod(0o755)
    facts = facts_mod.collect_facts(SSH(), fio_version="fio-3.33")  # type: ignore[arg-type]
    assert seen["command"] == "VMLAB_FIO_VERSION=fio-3.33 sh -s"
    assert facts.fio == "fio-3.33"
    assert not (tmp_path / "ran").exists()
    unknown = subprocess.run(
        ["sh", "-s"],
        input=script,
        capture_output=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    assert (tmp_path / "ran").exists()  # without it, the script asks fio itself
    assert facts_mod.parse_facts(unknown.stdout.decode()).fio == ""
