"""SPDK: the per-disk plans (pure), and what a real target does not show, against a fake RPC
server (tests/unit/fake_spdk.py): error answers, a silent target, older releases; and against
tiny scripts standing in for an app that hangs, ignores SIGINT or exits at start.

A real SPDK v23.01.1 target runs in tests/integration/test_spdk.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_spdk import FakeSpdk

from vmlab.errors import CommandError, HostError, LaunchError, SpecError
from vmlab.spdk.cpumask import check_host_cpumask, host_mask, parse_cpumask
from vmlab.spdk.plan import (
    AioBackend,
    MallocBackend,
    RbdBackend,
    RpcCall,
    UringBackend,
    render_plan,
)
from vmlab.spdk.rpc import SpdkRpc
from vmlab.spdk.target import SpdkApp, SpdkTarget
from vmlab.spdk.targets import TargetKey, spawned_masks, target_key
from vmlab.spec import Spdk

MIB = 1 << 20


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
)


# ---- plans (no SPDK)


def test_plan_aio_calls_and_teardown(image: Path) -> None:
    plan = render_plan("data0", AioBackend(image, block_size=512), cpumask="[1]")
    assert [c.to_json() for c in plan.setup] == [
        {
            "method": "bdev_aio_create",
            "params": {"name": "data0", "filename": str(image), "block_size": 512},
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
    assert 'bdev_aio_create {"block_size": 512' in plan.describe()
    uring = render_plan("data0", UringBackend(Path("/dev/sdz")))
    assert dict(uring.setup[0].params) == {"name": "data0", "filename": "/dev/sdz"}


def test_plan_rbd_registers_its_own_cluster() -> None:
    plan = render_plan("vol0", RBD)
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
        ("vhost_create_blk_controller", {"ctrlr": "vmlab.vol0", "dev_name": "vol0"}),
    ]
    assert [c.method for c in plan.teardown] == [
        "vhost_delete_controller",
        "bdev_rbd_delete",
        "bdev_rbd_unregister_cluster",
    ]


def test_plan_malloc() -> None:
    malloc = render_plan("ram0", MallocBackend(size_bytes=64 * MIB, block_size=4096))
    assert dict(malloc.setup[0].params) == {"name": "ram0", "num_blocks": 16384, "block_size": 4096}
    with pytest.raises(SpecError, match="not a multiple of 4096"):
        render_plan("ram0", MallocBackend(size_bytes=1000, block_size=4096))


@pytest.mark.parametrize("name", ["", "has space", "a,b", "x" * 21, "../up"])
def test_plan_rejects_names_unusable_as_serial(name: str) -> None:
    with pytest.raises(SpecError, match="not usable"):
        render_plan(name, MallocBackend(size_bytes=8 * MIB))


@pytest.mark.parametrize(
    ("text", "mask"), [("0x3", 3), ("3", 3), ("0xF0", 0xF0), ("[0,2-3]", 0b1101), (6, 6)]
)
def test_parse_cpumask(text: str | int, mask: int) -> None:
    assert parse_cpumask(text) == mask


@pytest.mark.parametrize("text", ["0x0", "", "zz", "[a]", 0, "[]"])
def test_parse_cpumask_rejects(text: str | int) -> None:
    with pytest.raises(SpecError, match="cpumask"):
        parse_cpumask(text)


def test_a_cpumask_beyond_the_host_is_refused() -> None:
    check_host_cpumask(host_mask())
    beyond = 1 << host_mask().bit_length()
    with pytest.raises(HostError, match="names cores this host does not give vmlab") as err:
        check_host_cpumask(beyond)
    assert err.value.hint is not None and "spdk.cpumask" in err.value.hint


def test_app_argv() -> None:
    app = SpdkApp("/opt/spdk/bin/vhost", cpumask=0x3, mem_size_mib=1024)
    argv = app.argv(
        rpc_socket=Path("/run/s/rpc.sock"), vhost_socket_dir=Path("/run/s"), huge_dir=Path("/h")
    )
    assert argv == [
        "/opt/spdk/bin/vhost",
        "-r",
        "/run/s/rpc.sock",
        "-S",
        "/run/s",
        "-m",
        "0x3",
        "--no-pci",
        "-s",
        "1024",
        "--huge-dir",
        "/h",
    ]


def test_one_target_per_binary_and_memory_on_the_union_of_masks() -> None:
    configs = [
        Spdk(cpumask="0x1"),
        Spdk(cpumask="[1]"),
        Spdk(binary=Path("/x/vhost"), mem_mib=512),
        Spdk(rpc_socket=Path("/run/spdk.sock"), cpumask="0x4"),
    ]
    assert spawned_masks(configs, "/opt/vhost") == {
        TargetKey(binary="/opt/vhost", mem_mib=1024): 0x3,
        TargetKey(binary="/x/vhost", mem_mib=512): 0x1,
    }
    assert target_key(configs[3], None) == TargetKey(rpc_socket=Path("/run/spdk.sock"))
    with pytest.raises(HostError, match="no SPDK vhost target found") as err:
        target_key(Spdk(), None)
    assert err.value.hint is not None and "build-spdk" in err.value.hint


# ---- the RPC client against what a real target will not do on demand


def test_error_answers_map_to_command_error(fake: FakeSpdk, image: Path) -> None:
    with SpdkRpc(fake.socket_path, timeout_s=10) as rpc:
        params = {"filename": str(image), "name": "d0"}
        rpc.call("bdev_aio_create", params)
        with pytest.raises(CommandError) as exists:
            rpc.call("bdev_aio_create", params)
        assert params == {"filename": str(image), "name": "d0"}  # SPDK's client got a copy
        assert exists.value.argv == ["spdk-rpc", "bdev_aio_create"]
        assert exists.value.returncode == -17
        assert "SPDK RPC bdev_aio_create failed: File exists" in str(exists.value)
        assert exists.value.hint is not None and "exists already" in exists.value.hint

        with pytest.raises(CommandError) as bad_params:
            rpc.call("bdev_aio_create", {"filename": str(image), "name": "d1", "bogus": 1})
        assert bad_params.value.returncode == -32603
        assert bad_params.value.hint is not None
        assert "rpc.py bdev_aio_create -h" in bad_params.value.hint

        with pytest.raises(CommandError) as unknown:
            rpc.call("bdev_frobnicate")
        assert unknown.value.returncode == -32601
        # the connection stays usable after error answers, and a parameterless call after an
        # error sends no parameters (SPDK's v23.01 client would send the error's method/req_id)
        assert rpc.core_mask() == 0b11
        assert fake.calls[-1] == ("framework_get_reactors", {})


def test_missing_rbd_support_names_the_build_option(short_dir: Path) -> None:
    fail = {"bdev_rbd_register_cluster": (-32601, "Method not found")}
    with (
        FakeSpdk(short_dir / "rpc.sock", fail=fail) as server,
        SpdkTarget.attach(server.socket_path) as target,
        pytest.raises(CommandError) as err,
    ):
        target.add_disk(render_plan("vol0", RBD))
    assert err.value.hint is not None and "--with-rbd" in err.value.hint


def test_timeout_when_the_server_never_answers(short_dir: Path) -> None:
    with (
        FakeSpdk(short_dir / "rpc.sock", silent=True) as server,
        SpdkRpc(server.socket_path, timeout_s=0.2) as rpc,
    ):
        with pytest.raises(CommandError, match=r"got no answer within 0\.2 s") as err:
            rpc.version()
        assert err.value.returncode is None
        assert server.methods_called == ["spdk_get_version"]


def test_connect_failure_is_a_host_error(short_dir: Path) -> None:
    with pytest.raises(HostError, match="cannot connect to the SPDK RPC socket"):
        SpdkRpc(short_dir / "absent.sock", timeout_s=1).version()


def test_a_release_without_the_socket_field_or_wait_init(short_dir: Path, image: Path) -> None:
    """Older releases: no framework_wait_init, no "socket" in vhost_get_controllers; the
    socket is then found in the target's -S directory."""
    with (
        FakeSpdk(short_dir / "rpc.sock", socket_field=False, no_wait_init=True) as server,
        SpdkTarget.attach(server.socket_path, vhost_socket_dir=short_dir / "vhost") as target,
    ):
        disk = target.add_disk(render_plan("d0", AioBackend(image)))
        assert disk.socket == short_dir / "vhost" / "vmlab.d0"
    with (
        FakeSpdk(short_dir / "rpc.sock", socket_field=False) as server,
        SpdkTarget.attach(server.socket_path) as target,
        pytest.raises(HostError, match="does not say where the socket"),
    ):
        target.add_disk(render_plan("d0", AioBackend(image)))
    assert server.bdevs == {}  # what the failed disk had created is gone again


# ---- the target's lifecycle where a real one would not misbehave on demand


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
            SpdkTarget.attach(server.socket_path) as target,
            pytest.raises(CommandError, match="Invalid argument"),
        ):
            target.add_disk(render_plan("d0", AioBackend(image)))
        assert server.methods_called[-2:] == ["vhost_create_blk_controller", "bdev_aio_delete"]
        assert "vhost_delete_controller" not in server.methods_called
        assert server.bdevs == {}


def test_plan_cpumask_is_checked_before_anything_is_created(fake: FakeSpdk, image: Path) -> None:
    with (
        pytest.raises(HostError, match="not within") as err,
        SpdkTarget.attach(fake.socket_path) as t,
    ):
        t.add_disk(render_plan("d0", AioBackend(image), cpumask="0x4"))
    assert "0x4 (cores 2)" in str(err.value) and "0x3 (cores 0,1)" in str(err.value)
    assert err.value.hint is not None and "-m 0x7" in err.value.hint
    assert not [m for m in fake.methods_called if m.endswith("_create")]


def test_attach_to_nothing_is_a_host_error(short_dir: Path) -> None:
    with pytest.raises(HostError, match="no SPDK target answers"):
        SpdkTarget.attach(short_dir / "rpc.sock", ready_timeout_s=0.2).__enter__()


def _spawn(binary: str, short_dir: Path, **kw: float) -> SpdkTarget:
    return SpdkTarget.spawn(
        SpdkApp(binary), log_path=short_dir / "spdk.log", runtime_root=short_dir, **kw
    )


def test_spawned_app_that_never_opens_its_socket_is_stopped(short_dir: Path) -> None:
    target = _spawn(_script(short_dir, "vhost", "exec sleep 600"), short_dir, ready_timeout_s=0.5)
    with pytest.raises(LaunchError, match=r"did not answer on .* within 0\.5 s") as err:
        target.__enter__()
    assert err.value.log == short_dir / "spdk.log"
    assert target.process is not None and target.process.proc is not None
    assert target.process.proc.returncode is not None and not _alive(target.process.proc.pid)
    assert not [p for p in short_dir.iterdir() if p.name.startswith("spdk-")]  # private dir gone


def test_spawned_app_ignoring_sigint_gets_sigkill(short_dir: Path) -> None:
    # one process, no children: killed grandchildren would linger as zombies under this PID 1
    ignore = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"
    binary = _script(short_dir, "vhost", f'exec "{sys.executable}" -c "{ignore}"')
    target = _spawn(binary, short_dir, ready_timeout_s=0.3, stop_timeout_s=0.3)
    with pytest.raises(LaunchError):
        target.__enter__()
    assert target.process is not None and target.process.proc is not None
    assert target.process.proc.returncode == -9
    assert "vmlab: stopped (status -9)" in (short_dir / "spdk.log").read_text()


def test_spawned_app_that_exits_reports_its_log(short_dir: Path) -> None:
    body = "echo 'EAL: No free 2048 kB hugepages reported'\nexit 1"
    target = _spawn(_script(short_dir, "vhost", body), short_dir, ready_timeout_s=10)
    with pytest.raises(LaunchError, match=r"exited with status 1 .*No free 2048 kB") as err:
        target.__enter__()
    assert err.value.hint is not None and "hugetlbfs" in err.value.hint
    failure = target.failure()
    assert failure is not None and "exited with status 1" in failure.message


def test_spawn_missing_binary(short_dir: Path) -> None:
    target = _spawn(str(short_dir / "nope"), short_dir)
    with pytest.raises(LaunchError, match="cannot run"):
        target.__enter__()


def test_find_spdk_prefers_vmlab_spdk_and_checks_it_is_spdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmlab.host import check_host
    from vmlab.spdk import find

    prefix = tmp_path / "spdk"
    (prefix / "bin").mkdir(parents=True)
    _script(prefix / "bin", "vhost", 'echo "SPDK v23.01.1"')
    monkeypatch.setenv("VMLAB_SPDK", str(prefix))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(find, "BUILD_ROOT", tmp_path / "none")
    found = find.find_spdk()
    assert found == find.FoundSpdk(prefix / "bin" / "vhost", "SPDK v23.01.1", "VMLAB_SPDK")
    facts = check_host(probe=False)
    assert (facts.spdk_vhost, facts.spdk_version) == (str(prefix / "bin/vhost"), "SPDK v23.01.1")
    assert "SPDK vhost" not in [m.what for m in facts.missing]
    _script(prefix / "bin", "vhost", "echo 'some other vhost'")
    assert find.find_spdk() is None
    facts = check_host(probe=False)
    (missing,) = [m for m in facts.missing if m.what == "SPDK vhost"]
    assert "build-spdk" in missing.fix and facts.spdk_vhost is None
