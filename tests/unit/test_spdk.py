"""SPDK vhost target: plans, the JSON-RPC client and the target's lifecycle, against a fake.

SPDK cannot run on this host (no build, no hugepages), so the RPC server is tests/unit/
fake_spdk.py, which is strict about parameter names and object lifetimes; the "binaries"
are tiny scripts in a temp dir.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fake_spdk
import pytest
from fake_spdk import FakeSpdk

from vmlab.errors import CommandError, HostError, LaunchError, SpecError
from vmlab.launch.spdk import (
    AioBackend,
    MallocBackend,
    RbdBackend,
    RpcCall,
    SpdkApp,
    SpdkRpc,
    SpdkTarget,
    parse_cpumask,
    qemu_vhost_user_blk_args,
    rbd_create_params,
    render_plan,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="spdk-t", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[FakeSpdk]:
    with FakeSpdk(short_dir / "rpc.sock", cores=(0, 1), vhost_dir=short_dir) as server:
        yield server


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\0" * 4096)
    return path


def _script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


RBD = RbdBackend(
    pool="rbd",
    image="vol0",
    user_id="admin",
    config_file=Path("/etc/ceph/ceph.conf"),
    key_file=Path("/etc/ceph/ceph.client.admin.keyring"),
    block_size=512,
)


# ---- plans (no SPDK)


def test_plan_aio_calls_and_teardown(image: Path) -> None:
    plan = render_plan("data0", AioBackend(image, block_size=4096), cpumask="[1]")
    assert [c.to_json() for c in plan.setup] == [
        {
            "method": "bdev_aio_create",
            "params": {"name": "data0", "filename": str(image), "block_size": 4096},
        },
        {
            "method": "vhost_create_blk_controller",
            "params": {"ctrlr": "vmlab.data0", "dev_name": "data0", "cpumask": "0x2"},
        },
    ]
    assert plan.teardown == (
        RpcCall("vhost_delete_controller", {"ctrlr": "vmlab.data0"}),
        RpcCall("bdev_aio_delete", {"name": "data0"}),
    )
    assert plan.cpumask == "0x2"
    assert 'bdev_aio_create {"block_size": 4096' in plan.describe()


def test_plan_rbd_registers_its_own_cluster() -> None:
    plan = render_plan("vol0", RBD, readonly=True)
    assert [(c.method, dict(c.params)) for c in plan.setup] == [
        (
            "bdev_rbd_register_cluster",
            {
                "name": "vmlab.vol0.rados",
                "user_id": "admin",
                "config_file": "/etc/ceph/ceph.conf",
                "key_file": "/etc/ceph/ceph.client.admin.keyring",
            },
        ),
        (
            "bdev_rbd_create",
            {
                "name": "vol0",
                "pool_name": "rbd",
                "rbd_name": "vol0",
                "block_size": 512,
                "cluster_name": "vmlab.vol0.rados",
            },
        ),
        (
            "vhost_create_blk_controller",
            {"ctrlr": "vmlab.vol0", "dev_name": "vol0", "readonly": True},
        ),
    ]
    assert [c.method for c in plan.teardown] == [
        "vhost_delete_controller",
        "bdev_rbd_delete",
        "bdev_rbd_unregister_cluster",
    ]


def test_plan_rbd_on_a_registered_cluster_and_malloc() -> None:
    plan = render_plan("vol1", RbdBackend(pool="p", image="i", cluster_name="shared"))
    assert [c.method for c in plan.setup] == ["bdev_rbd_create", "vhost_create_blk_controller"]
    assert plan.setup[0].params["cluster_name"] == "shared"
    assert "user_id" not in plan.setup[0].params
    malloc = render_plan("ram0", MallocBackend(size_mib=64, block_size=4096))
    assert dict(malloc.setup[0].params) == {"name": "ram0", "num_blocks": 16384, "block_size": 4096}


@pytest.mark.parametrize("name", ["", "has space", "a,b", "x" * 21, "../up"])
def test_plan_rejects_names_unusable_as_serial(name: str) -> None:
    with pytest.raises(SpecError, match="not usable"):
        render_plan(name, MallocBackend(size_mib=8))


def test_rbd_params_take_a_cluster_or_a_user_not_both() -> None:
    with pytest.raises(SpecError, match="not both"):
        rbd_create_params("v", "p", "i", 512, cluster_name="c", user_id="admin")
    assert rbd_create_params("v", "p", "i", 512, user_id="admin", config={"a": "b"}) == {
        "name": "v",
        "pool_name": "p",
        "rbd_name": "i",
        "block_size": 512,
        "user_id": "admin",
        "config": {"a": "b"},
    }


@pytest.mark.parametrize(
    ("text", "mask"), [("0x3", 3), ("3", 3), ("0xF0", 0xF0), ("[0,2-3]", 0b1101), (6, 6)]
)
def test_parse_cpumask(text: str | int, mask: int) -> None:
    assert parse_cpumask(text) == mask


@pytest.mark.parametrize("text", ["0x0", "", "zz", "[a]", 0, "[]"])
def test_parse_cpumask_rejects(text: str | int) -> None:
    with pytest.raises(SpecError, match="cpumask"):
        parse_cpumask(text)


def test_app_argv_and_qemu_args() -> None:
    app = SpdkApp("/opt/spdk/build/bin/vhost", cpumask="[0,1]", mem_size_mib=1024)
    assert app.argv(rpc_socket=Path("/run/s/rpc.sock"), vhost_socket_dir=Path("/run/s")) == [
        "/opt/spdk/build/bin/vhost",
        "-r",
        "/run/s/rpc.sock",
        "-S",
        "/run/s",
        "-m",
        "0x3",
        "-s",
        "1024",
    ]
    assert qemu_vhost_user_blk_args(Path("/run/a,b/vmlab.d0"), id="d0", num_queues=2) == [
        "-chardev",
        "socket,id=d0-sock,path=/run/a,,b/vmlab.d0",
        "-device",
        "vhost-user-blk-pci,chardev=d0-sock,id=d0,num-queues=2",
    ]


# ---- the client


def test_split_answers_are_reassembled(short_dir: Path) -> None:
    with (
        FakeSpdk(short_dir / "rpc.sock", split=True) as server,
        SpdkRpc(server.socket_path, timeout_s=10) as rpc,
    ):
        version = rpc.spdk_get_version()
        assert version.text == fake_spdk.VERSION  # non-ASCII, cut mid-character
        assert (version.major, version.minor) == (24, 1)
        assert rpc.framework_get_reactors() == [0, 1]
        assert rpc.bdev_malloc_create("m0", 2048, 512) == "m0"
        assert rpc.core_mask() == 3


def test_error_answers_map_to_command_error(fake: FakeSpdk, image: Path) -> None:
    with SpdkRpc(fake.socket_path, timeout_s=10) as rpc:
        rpc.bdev_aio_create(image, "d0")
        with pytest.raises(CommandError) as exists:
            rpc.bdev_aio_create(image, "d0")
        assert exists.value.argv == ["spdk-rpc", "bdev_aio_create"]
        assert exists.value.returncode == -17
        assert "SPDK RPC bdev_aio_create failed: File exists" in str(exists.value)
        assert exists.value.hint is not None and "exists already" in exists.value.hint

        with pytest.raises(CommandError) as bad_params:
            rpc.call("bdev_aio_create", {"filename": str(image), "name": "d1", "bogus": 1})
        assert bad_params.value.returncode == -32602
        assert (
            bad_params.value.hint is not None
            and "rpc.py bdev_aio_create -h" in bad_params.value.hint
        )

        with pytest.raises(CommandError) as unknown:
            rpc.call("bdev_frobnicate")
        assert unknown.value.returncode == -32601
        # the connection stays usable after error answers
        assert rpc.framework_get_reactors() == [0, 1]


def test_missing_rbd_support_names_the_build_option(short_dir: Path) -> None:
    fail = {"bdev_rbd_register_cluster": (-32601, "Method not found")}
    with (
        FakeSpdk(short_dir / "rpc.sock", fail=fail) as server,
        SpdkRpc(server.socket_path, timeout_s=10) as rpc,
        pytest.raises(CommandError) as err,
    ):
        rpc.bdev_rbd_register_cluster("c", user_id="admin")
    assert err.value.hint is not None and "--with-rbd" in err.value.hint


def test_timeout_when_the_server_never_answers(short_dir: Path) -> None:
    with (
        FakeSpdk(short_dir / "rpc.sock", silent=True) as server,
        SpdkRpc(server.socket_path, timeout_s=0.2) as rpc,
    ):
        with pytest.raises(CommandError, match=r"got no answer within 0\.2 s") as err:
            rpc.spdk_get_version()
        assert err.value.returncode is None
        assert server.methods_called == ["spdk_get_version"]


def test_connect_failure_is_a_host_error(short_dir: Path) -> None:
    with pytest.raises(HostError, match="cannot connect to the SPDK RPC socket"):
        SpdkRpc(short_dir / "absent.sock", timeout_s=1).spdk_get_version()


def test_cpumask_outside_the_target_is_rejected_before_create(fake: FakeSpdk) -> None:
    with SpdkRpc(fake.socket_path, timeout_s=10) as rpc:
        rpc.bdev_malloc_create("m0", 2048, 512)
        with pytest.raises(HostError) as err:
            rpc.vhost_create_blk_controller("c0", "m0", cpumask="0x4")
    assert "0x4 (cores 2)" in str(err.value)
    assert "0x3 (cores 0,1)" in str(err.value)
    assert err.value.hint is not None and "-m 0x7" in err.value.hint
    assert "vhost_create_blk_controller" not in fake.methods_called


# ---- the target


def test_attach_runs_the_aio_plan_and_cleans_up(fake: FakeSpdk, image: Path) -> None:
    plan = render_plan("data0", AioBackend(image), cpumask="0x2")
    with SpdkTarget.attach(fake.socket_path) as target:
        disk = target.add_disk(plan)
        assert disk.socket == fake.vhost_dir / "vmlab.data0"
        assert fake.controllers == {"vmlab.data0": {"bdev": "data0", "cpumask": "0x2"}}
        assert disk.qemu_args(id="disk1")[1] == f"socket,id=disk1-sock,path={disk.socket}"
    assert fake.methods_called == [
        "spdk_get_version",
        "framework_wait_init",
        "framework_get_reactors",  # cpumask check
        "bdev_aio_create",
        "vhost_create_blk_controller",
        "vhost_get_controllers",  # where the socket is
        "vhost_delete_controller",
        "bdev_aio_delete",
    ]
    assert fake.bdevs == {} and fake.controllers == {}


def test_attach_runs_the_rbd_plan_with_exact_params(fake: FakeSpdk) -> None:
    with SpdkTarget.attach(fake.socket_path) as target:
        target.add_disk(render_plan("vol0", RBD))
        assert fake.clusters == {"vmlab.vol0.rados"}
    created = [(m, p) for m, p in fake.calls if m.startswith("bdev_rbd")]
    assert created[0] == (
        "bdev_rbd_register_cluster",
        {
            "name": "vmlab.vol0.rados",
            "user_id": "admin",
            "config_file": "/etc/ceph/ceph.conf",
            "key_file": "/etc/ceph/ceph.client.admin.keyring",
        },
    )
    assert [m for m, _ in created] == [
        "bdev_rbd_register_cluster",
        "bdev_rbd_create",
        "bdev_rbd_delete",
        "bdev_rbd_unregister_cluster",
    ]
    assert fake.clusters == set() and fake.bdevs == {}


def test_cleanup_runs_newest_first_on_exception(fake: FakeSpdk, image: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), SpdkTarget.attach(fake.socket_path) as target:
        target.add_disk(render_plan("d0", AioBackend(image)))
        target.add_disk(render_plan("vol0", RBD))
        mark = len(fake.calls)
        raise RuntimeError("boom")
    assert fake.calls[mark:] == [
        ("vhost_delete_controller", {"ctrlr": "vmlab.vol0"}),
        ("bdev_rbd_delete", {"name": "vol0"}),
        ("bdev_rbd_unregister_cluster", {"name": "vmlab.vol0.rados"}),
        ("vhost_delete_controller", {"ctrlr": "vmlab.d0"}),
        ("bdev_aio_delete", {"name": "d0"}),
    ]
    assert fake.bdevs == {} and fake.clusters == set() and fake.controllers == {}


def test_cleanup_stops_at_a_target_that_no_longer_answers(fake: FakeSpdk, image: Path) -> None:
    with SpdkTarget.attach(fake.socket_path, rpc_timeout_s=0.3) as target:
        target.add_disk(render_plan("d0", AioBackend(image)))
        mark = len(fake.calls)
        fake.silent = True
    # one unanswered delete, then no more waiting on a stuck target
    assert fake.methods_called[mark:] == ["vhost_delete_controller"]


def test_partial_setup_failure_deletes_only_what_was_created(short_dir: Path, image: Path) -> None:
    fail = {"vhost_create_blk_controller": (-22, "Invalid argument")}
    with FakeSpdk(short_dir / "rpc.sock", fail=fail) as server:
        with (
            pytest.raises(CommandError, match="Invalid argument"),
            SpdkTarget.attach(server.socket_path) as target,
        ):
            target.add_disk(render_plan("d0", AioBackend(image)))
        assert server.methods_called[-2:] == ["vhost_create_blk_controller", "bdev_aio_delete"]
        assert "vhost_delete_controller" not in server.methods_called
        assert server.bdevs == {}


def test_plan_cpumask_is_checked_before_anything_is_created(fake: FakeSpdk, image: Path) -> None:
    with pytest.raises(HostError, match="not within"), SpdkTarget.attach(fake.socket_path) as t:
        t.add_disk(render_plan("d0", AioBackend(image), cpumask="0xc"))
    assert not [m for m in fake.methods_called if m.endswith("_create")]


def test_attach_to_nothing_is_a_host_error(short_dir: Path) -> None:
    with pytest.raises(HostError, match="no SPDK target answers"):
        SpdkTarget.attach(short_dir / "rpc.sock", ready_timeout_s=0.2).__enter__()


def test_spawned_app_that_never_opens_its_socket_is_killed(short_dir: Path) -> None:
    binary = _script(short_dir, "vhost", "exec sleep 600")
    target = SpdkTarget.spawn(
        SpdkApp(binary),
        log_path=short_dir / "spdk.log",
        runtime_root=short_dir,
        ready_timeout_s=0.5,
    )
    with pytest.raises(LaunchError, match=r"did not answer on .* within 0\.5 s") as err:
        target.__enter__()
    assert err.value.log == short_dir / "spdk.log"
    assert target.proc is not None
    assert target.proc.returncode is not None and not _alive(target.proc.pid)
    assert not [p for p in short_dir.iterdir() if p.name.startswith("spdk-")]  # private dir gone


def test_spawned_app_ignoring_sigint_gets_sigkill(short_dir: Path) -> None:
    # one process, no children: killed grandchildren would linger as zombies under this PID 1
    ignore = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"
    binary = _script(short_dir, "vhost", f'exec "{sys.executable}" -c "{ignore}"')
    target = SpdkTarget.spawn(
        SpdkApp(binary),
        log_path=short_dir / "spdk.log",
        runtime_root=short_dir,
        ready_timeout_s=0.3,
        stop_timeout_s=0.3,
    )
    with pytest.raises(LaunchError):
        target.__enter__()
    assert target.proc is not None and target.proc.returncode == -9


def test_spawned_app_that_exits_reports_its_log(short_dir: Path) -> None:
    binary = _script(
        short_dir, "spdk_tgt", "echo 'EAL: No free 2048 kB hugepages reported'\nexit 1"
    )
    target = SpdkTarget.spawn(
        SpdkApp(binary), log_path=short_dir / "spdk.log", runtime_root=short_dir, ready_timeout_s=10
    )
    with pytest.raises(
        LaunchError, match=r"exited with status 1 before .*: EAL: No free 2048 kB hugepages"
    ):
        target.__enter__()


def test_spawn_missing_binary(short_dir: Path) -> None:
    target = SpdkTarget.spawn(
        SpdkApp(str(short_dir / "nope")), log_path=short_dir / "l", runtime_root=short_dir
    )
    with pytest.raises(LaunchError, match="cannot run the SPDK app"):
        target.__enter__()


def test_spawned_target_end_to_end(short_dir: Path) -> None:
    """The fake run as an app: argv, readiness, a disk, cleanup, then a clean SIGINT exit."""
    fake_path = Path(fake_spdk.__file__)
    binary = _script(short_dir, "spdk_tgt", f'exec "{sys.executable}" "{fake_path}" "$@"')
    journal = short_dir / "journal.jsonl"
    app = SpdkApp(binary, cpumask="0x3", mem_size_mib=64, extra_args=("--journal", str(journal)))
    log_path = short_dir / "spdk.log"
    target = SpdkTarget.spawn(app, log_path=log_path, runtime_root=short_dir)
    with target:
        disk = target.add_disk(render_plan("ram0", MallocBackend(size_mib=8), cpumask="0x2"))
        assert target.vhost_socket_dir is not None
        assert disk.socket == target.vhost_socket_dir / "vmlab.ram0"
        private = target.vhost_socket_dir
        assert target.version is not None and target.version.text == fake_spdk.VERSION
    assert target.proc is not None and target.proc.returncode == 0  # exited on SIGINT
    methods = [line.split('"')[1] for line in journal.read_text().splitlines()]
    assert methods[-2:] == ["vhost_delete_controller", "bdev_malloc_delete"]
    assert "cores [0, 1]" in log_path.read_text()
    assert not private.exists()
    assert not _alive(target.proc.pid)
    assert os.path.exists(log_path)
