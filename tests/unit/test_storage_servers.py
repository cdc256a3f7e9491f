"""Serving disks: one server per ``served_by``, the same plan for `vmlab render` and the bench,
and the client key the spec names reaching every RBD client (QEMU, qemu-storage-daemon, SPDK)."""

from __future__ import annotations

import base64
import stat
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from vmlab.launch.qemu import Deadlines
from vmlab.plan import Case, plan
from vmlab.render.model import BootImage, DiskSource, GuestRuntime
from vmlab.render.qemu import render_qemu
from vmlab.results.rundir import CaseDir
from vmlab.spec import parse_spec
from vmlab.storage import SERVERS, preview_disks, server_of
from vmlab.storage.backing import PreviewBacking
from vmlab.storage.base import ServeContext
from vmlab.storage.qsd import QsdServer
from vmlab.storage.spdk import spdk_plan

KEY = base64.b64encode(b"sixteen byte key").decode()


def rbd_case(tmp_path: Path, **disk: object) -> Case:
    conf = tmp_path / "lab.conf"
    conf.write_text("[global]\nmon host = 127.0.0.1\n")  # names no keyring
    keyring = tmp_path / "bench.keyring"
    keyring.write_text(f"[client.bench]\n\tkey = {KEY}\n")
    backend = {
        "type": "rbd",
        "pool": "bench",
        "image": "vol1",
        "cluster": {"conf": str(conf), "client_id": "bench", "keyring": str(keyring)},
    }
    spec = {
        "name": "rbd",
        "guest": {"disks": [{"name": "data", "backend": backend, **disk}]},
        "jobs": [{"name": "j", "rw": "randread"}],
    }
    (case,) = plan(parse_spec(yaml.safe_load(yaml.safe_dump(spec))))
    return case


def ctx(tmp_path: Path, case: Case) -> ServeContext:
    return ServeContext(
        case=case,
        case_dir=CaseDir(path=tmp_path / "case", case_id=case.id),
        deadlines=Deadlines.for_accel("tcg"),
        private_dir=tmp_path / "private",
        scratch_root=tmp_path / "scratch",
        qsd="qemu-storage-daemon",
    )


def test_every_served_by_has_exactly_one_server() -> None:
    assert sorted(SERVERS) == ["guest", "lio", "qemu", "qsd", "spdk"]
    assert all(name == server.name for name, server in SERVERS.items())


def argv_of(case: Case, sources: dict[str, DiskSource]) -> list[str]:
    runtime = GuestRuntime(
        qmp_socket=Path("/q"), serial_log=Path("/s"), pidfile=Path("/p"), ssh_port=2222
    )
    boot = BootImage(Path("/k"), Path("/i"), "console=ttyS0")
    return render_qemu(
        case, qemu="qemu-system-x86_64", accel="tcg", boot=boot, disks=sources, runtime=runtime
    ).argv


def test_the_spec_keyring_reaches_qemu_through_a_secret_object(tmp_path: Path) -> None:
    """Before: QEMU's rbd blockdev had only conf and user, so a keyring the conf does not name
    was silently ignored."""
    case = rbd_case(tmp_path)
    (disk,) = case.variant.guest.disks
    source = PreviewBacking().rbd(disk.name, disk.backend)  # type: ignore[arg-type]
    with ExitStack() as stack:
        served = server_of(disk).serve(stack, disk, source, ctx(tmp_path, case))
    assert served.rbd is not None and served.rbd.key_file is not None
    key_file = served.rbd.key_file
    assert key_file.read_text() == KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    argv = argv_of(case, {"data": served})
    secret = f"secret,id=sec-data,file={key_file},format=base64"
    assert argv[argv.index(secret) - 1] == "-object"
    (rbd,) = [a for a in argv if a.startswith("driver=rbd,")]
    assert "user=bench,key-secret=sec-data," in rbd
    assert argv.index(secret) < argv.index(rbd)


def test_the_spec_keyring_reaches_qemu_storage_daemon_and_spdk(tmp_path: Path) -> None:
    case = rbd_case(tmp_path, model="vhost-user-blk")
    (preview,) = preview_disks(case).values()
    assert "--object" in preview.argv
    assert any(a.startswith("driver=rbd,") and "key-secret=sec-data" in a for a in preview.argv)
    assert isinstance(server_of(case.variant.guest.disks[0]), QsdServer)
    spdk = rbd_case(tmp_path, model="vhost-user-blk", target="spdk", spdk={"binary": "/x/vhost"})
    (disk,) = spdk.variant.guest.disks
    source = PreviewBacking().rbd(disk.name, disk.backend)  # type: ignore[arg-type]
    (register,) = [c for c in spdk_plan(disk, source).setup if c.method.endswith("cluster")]
    assert register.params["key_file"] == str(tmp_path / "bench.keyring")


def test_a_preview_names_the_keyring_the_micro_cluster_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `vmlab render` showed a `keyring` beside the conf, a file no cluster writes."""
    monkeypatch.setenv("VMLAB_STATE", str(tmp_path / "state"))
    spec = {
        "name": "micro",
        "guest": {"disks": [{"name": "data", "backend": {"type": "rbd"}}]},
        "jobs": [{"name": "j", "rw": "randread"}],
    }
    (case,) = plan(parse_spec(spec))
    (preview,) = preview_disks(case).values()
    assert preview.source.rbd is not None
    assert preview.source.rbd.conf == tmp_path / "state" / "ceph" / "ceph.conf"
    assert preview.source.rbd.keyring == tmp_path / "state" / "ceph" / "ceph.client.admin.keyring"
    assert preview.source.rbd.key_file == Path("<guest-dir>/rbd-data.key")


def test_previews_say_what_each_server_would_start(tmp_path: Path) -> None:
    spec = {
        "name": "servers",
        "guest": {
            "disks": [
                {"name": "q", "model": "virtio-blk"},
                {"name": "vu", "model": "vhost-user-blk"},
                {"name": "sp", "model": "vhost-user-blk", "target": "spdk",
                 "spdk": {"rpc_socket": "/run/spdk.sock"}},
                {"name": "ls", "model": "vhost-scsi",
                 "backend": {"type": "block", "path": "/dev/sdz"}},
            ]
        },
        "jobs": [{"name": "j", "disk": "q", "rw": "randread"}],
    }  # fmt: skip
    (case,) = plan(parse_spec(spec))
    previews = preview_disks(case)
    assert previews["q"].title == "" and previews["q"].argv == ()
    assert previews["vu"].argv[0] == "qemu-storage-daemon"
    assert previews["vu"].source.socket == Path("<sidecar-vu>/vhost-user.sock")
    assert "vhost_create_blk_controller" in previews["sp"].steps
    assert previews["sp"].source.socket is not None
    assert previews["ls"].source.wwpn and "targetcli" in previews["ls"].steps
