"""Kernel vhost-scsi (LIO): preflight on generated /sys trees, targetcli argvs, teardown.

This host has no vhost-scsi modules and no configfs, so the kernel is a generated tree and
targetcli a recording runner; the argvs are the contract checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from vmlab.errors import CommandError, HostError, SpecError
from vmlab.storage import lio
from vmlab.storage.lio import (
    LioDisk,
    LioTarget,
    Problem,
    preflight,
    raise_for_problems,
    render_lio,
    run_command,
    unit_serial_for,
    wwpn_for,
)

RELEASE = "6.1.0-18-amd64"
ALL_MODULES = ("vhost_scsi", "target_core_mod", "target_core_iblock", "configfs")


def make_host(
    root: Path,
    *,
    loaded: Sequence[str] = ALL_MODULES,
    proc_modules: Sequence[str] = (),
    dev: bool = True,
    configfs: bool = True,
    lio: bool = True,
    shipped: Sequence[str] | None = None,
    builtin: Sequence[str] = (),
    bus: bool = True,
) -> Path:
    """A host tree: /sys/module/*, /proc/{modules,mounts}, /dev/vhost-scsi, configfs, modules,
    the D-Bus system bus socket."""
    if bus:
        (root / "run/dbus").mkdir(parents=True)
        (root / "run/dbus/system_bus_socket").touch()
    for name in loaded:
        (root / "sys/module" / name).mkdir(parents=True)
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(RELEASE + "\n")
    (root / "proc/modules").write_text(
        "".join(f"{m} 94208 1 - Live 0x0000000000000000\n" for m in proc_modules)
    )
    mounts = ["sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0"]
    if configfs:
        mounts.append("configfs /sys/kernel/config configfs rw,nosuid,nodev,noexec,relatime 0 0")
    (root / "proc/mounts").write_text("\n".join(mounts) + "\n")
    (root / "dev").mkdir()
    if dev:
        (root / "dev/vhost-scsi").write_text("")
    (root / "sys/kernel/config").mkdir(parents=True)
    if lio:
        (root / "sys/kernel/config/target/core").mkdir(parents=True)
    if shipped is not None:
        base = root / "lib/modules" / RELEASE
        base.mkdir(parents=True)
        dep = "".join(f"kernel/drivers/x/{m.replace('_', '-')}.ko.xz: \n" for m in shipped)
        (base / "modules.dep").write_text(dep)
        (base / "modules.builtin").write_text("".join(f"kernel/x/{m}.ko\n" for m in builtin))
    return root


def check(root: Path, **kw: object) -> list[Problem]:
    kw.setdefault("which", lambda name: f"/usr/bin/{name}")
    kw.setdefault("euid", 0)
    return preflight(root, **kw)  # type: ignore[arg-type]


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


# ---- preflight


def test_preflight_all_present(tmp_path: Path) -> None:
    assert check(make_host(tmp_path)) == []


def test_preflight_missing_backstore_module(tmp_path: Path) -> None:
    root = make_host(tmp_path, loaded=("vhost_scsi", "target_core_mod"))
    (problem,) = check(root)
    assert problem.code == "modules-missing"
    assert "target_core_iblock" in problem.message
    assert problem.fix.startswith("modprobe target_core_iblock")


def test_preflight_missing_vhost_scsi_and_device(tmp_path: Path) -> None:
    root = make_host(tmp_path, loaded=("target_core_mod",), dev=False)
    problems = check(root)
    assert codes(problems) == ["modules-missing", "dev-missing"]
    assert problems[0].fix.startswith("modprobe vhost_scsi target_core_iblock")
    assert "modprobe vhost_scsi" in problems[1].fix


def test_preflight_reads_proc_modules_too(tmp_path: Path) -> None:
    root = make_host(tmp_path, loaded=(), proc_modules=ALL_MODULES)
    assert check(root) == []


def test_preflight_fileio_needs_target_core_file(tmp_path: Path) -> None:
    root = make_host(tmp_path)
    assert check(root, backstore="block") == []
    (problem,) = check(root, backstore="fileio")
    assert problem.fix.startswith("modprobe target_core_file")


def test_preflight_module_the_kernel_does_not_ship(tmp_path: Path) -> None:
    root = make_host(
        tmp_path,
        loaded=("target_core_mod", "target_core_iblock"),
        dev=False,
        shipped=("target_core_mod", "target_core_iblock"),
    )
    problems = check(root)
    assert codes(problems) == ["module-unavailable", "dev-missing"]
    assert RELEASE in problems[0].message and "vhost_scsi" in problems[0].message
    assert "CONFIG_VHOST_SCSI" in problems[0].fix


def test_preflight_builtin_module_counts(tmp_path: Path) -> None:
    root = make_host(
        tmp_path,
        loaded=("vhost_scsi", "target_core_mod"),
        shipped=("vhost_scsi",),
        builtin=("target_core_iblock",),
    )
    assert check(root) == []


def test_preflight_configfs_not_mounted(tmp_path: Path) -> None:
    root = make_host(tmp_path, configfs=False, lio=False)
    problems = check(root)
    assert codes(problems) == ["configfs-unmounted"]  # target/ missing follows from it
    assert problems[0].fix == "mount -t configfs none /sys/kernel/config"


def test_preflight_lio_core_missing_under_configfs(tmp_path: Path) -> None:
    root = make_host(tmp_path, loaded=("vhost_scsi", "target_core_iblock"), lio=False)
    problems = check(root)
    assert codes(problems) == ["modules-missing", "lio-missing"]
    assert problems[0].fix.startswith("modprobe target_core_mod")


def test_preflight_device_node_missing_with_module_loaded(tmp_path: Path) -> None:
    root = make_host(tmp_path, dev=False)
    misc = root / "sys/class/misc/vhost-scsi"
    misc.mkdir(parents=True)
    (misc / "dev").write_text("10:59\n")
    (problem,) = check(root)
    assert problem.code == "dev-missing"
    assert "mknod /dev/vhost-scsi c 10 59" in problem.fix


def test_preflight_targetcli_and_root(tmp_path: Path) -> None:
    problems = check(make_host(tmp_path), which=lambda _name: None, euid=1000)
    assert codes(problems) == ["targetcli-missing", "not-root"]
    assert problems[0].fix == "apt-get install targetcli-fb"


def test_preflight_without_a_system_bus_needs_dbus_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    root = make_host(tmp_path, bus=False)
    (problem,) = check(root, which=lambda name: None if name == "dbus-daemon" else name)
    assert problem.code == "dbus-missing" and "apt-get install dbus-daemon" in problem.fix
    assert check(root, which=lambda name: name) == []  # vmlab starts a private bus then
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/elsewhere")
    assert check(root, which=lambda name: None if name == "dbus-daemon" else name) == []


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="apt-get install dbus-daemon")
def test_a_private_bus_answers_targetcli_and_stops_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real dbus-daemon: targetcli-fb's D-Bus question (here dbus-send's) gets an answer."""
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    monkeypatch.setattr(lio, "SYSTEM_BUS_SOCKET", tmp_path / "no-system-bus")
    with lio.bus_for_targetcli(tmp_path / "work", tmp_path) as env:
        assert env is not None
        address = env["DBUS_SYSTEM_BUS_ADDRESS"]
        asked = subprocess.run(
            [
                "dbus-send",
                f"--bus={address}",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListNames",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert asked.returncode == 0 and "org.freedesktop.DBus" in asked.stdout, asked.stderr
        daemons = subprocess.run(
            ["pgrep", "-f", address.removeprefix("unix:path=")],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert len(daemons) == 1
    assert not Path(f"/proc/{daemons[0]}").exists()


def test_a_long_case_scratch_path_keeps_the_bus_socket_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference experiment's case 4 id made a scratch path past a socket's 107 bytes:
    dbus-daemon died ("Socket name too long"). The log stays there; the socket does not."""
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    monkeypatch.setattr(lio, "SYSTEM_BUS_SOCKET", tmp_path / "no-system-bus")
    workdir = tmp_path / ("x" * 60) / "lio-vhost-scsi-rbd-krbd-num-queues-2"
    short = tmp_path / "p"
    short.mkdir()
    if shutil.which("dbus-daemon") is not None:
        with lio.bus_for_targetcli(workdir, short) as env:
            assert env == {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={short}/dbus.sock"}
        assert (workdir / "dbus-daemon.log").exists()
    with (
        pytest.raises(HostError, match="longer than 107 bytes"),
        lio.bus_for_targetcli(workdir, workdir),
    ):
        pass


def test_with_a_system_bus_targetcli_runs_in_vmlabs_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lio, "SYSTEM_BUS_SOCKET", tmp_path)  # exists
    with lio.bus_for_targetcli(tmp_path / "work", tmp_path) as env:
        assert env is None
    assert not (tmp_path / "work").exists()


def test_raise_for_problems_names_every_fix(tmp_path: Path) -> None:
    raise_for_problems([])
    problems = check(make_host(tmp_path, configfs=False), which=lambda _name: None)
    with pytest.raises(HostError, match="configfs-unmounted") as err:
        raise_for_problems(problems)
    assert (
        err.value.hint == "mount -t configfs none /sys/kernel/config; apt-get install targetcli-fb"
    )


def test_preflight_on_this_host_sees_its_device_node() -> None:
    problems = preflight(Path("/"), which=lambda _name: None, euid=0)
    assert ("dev-missing" in codes(problems)) == (not Path("/dev/vhost-scsi").exists())
    assert "targetcli-missing" in codes(problems)


# ---- rendering


def test_wwpn_format_and_determinism() -> None:
    wwpn = wwpn_for("vol0")
    assert re.fullmatch(r"naa\.5001405[0-9a-f]{9}", wwpn)
    assert wwpn_for("vol0") == wwpn
    assert wwpn_for("vol1") != wwpn
    assert unit_serial_for("vol0") == unit_serial_for("vol0") != unit_serial_for("vol1")


def test_block_setup_and_teardown_argvs() -> None:
    plan = render_lio(LioDisk("vol0", Path("/dev/rbd0")))
    wwpn, serial = wwpn_for("vol0"), unit_serial_for("vol0")
    assert plan.setup == [
        [
            "targetcli",
            "/backstores/block",
            "create",
            "name=vol0",
            "dev=/dev/rbd0",
            f"wwn={serial}",
        ],
        ["targetcli", "/vhost", "create", wwpn],
        ["targetcli", f"/vhost/{wwpn}/tpg1/luns", "create", "/backstores/block/vol0", "lun=0"],
    ]
    assert plan.teardown == [
        ["targetcli", f"/vhost/{wwpn}/tpg1/luns", "delete", "lun0"],
        ["targetcli", "/vhost", "delete", wwpn],
        ["targetcli", "/backstores/block", "delete", "vol0"],
    ]
    assert plan.configfs_lun == Path("target/vhost", wwpn, "tpgt_1/lun/lun_0")
    assert f"targetcli /vhost create {wwpn}" in plan.describe()


def test_fileio_and_readonly_argvs() -> None:
    fileio = render_lio(LioDisk("img0", Path("/srv/img0.raw"), backstore="fileio"))
    assert fileio.setup[0] == [
        "targetcli",
        "/backstores/fileio",
        "create",
        "name=img0",
        "file_or_dev=/srv/img0.raw",
        "write_back=false",
        f"wwn={unit_serial_for('img0')}",
    ]
    assert fileio.teardown[-1] == ["targetcli", "/backstores/fileio", "delete", "img0"]
    assert fileio.setup[2][3] == "/backstores/fileio/img0"
    ro = render_lio(LioDisk("ro0", Path("/dev/rbd1"), readonly=True), targetcli="/opt/targetcli")
    assert ro.setup[0][0] == "/opt/targetcli"
    assert "readonly=true" in ro.setup[0]


@pytest.mark.parametrize(
    "disk",
    [
        LioDisk("has space", Path("/dev/rbd0")),
        LioDisk("a/b", Path("/dev/rbd0")),
        LioDisk("vol0", Path("dev/rbd0")),
        LioDisk("vol0", Path("/srv/my disk.raw"), backstore="fileio"),
    ],
)
def test_render_rejects_what_targetcli_cannot_take(disk: LioDisk) -> None:
    with pytest.raises(SpecError):
        render_lio(disk)


# ---- LioTarget


class Kernel:
    """A recording targetcli runner that also does what the kernel would in configfs."""

    def __init__(self, root: Path, *, fail_on: str | None = None, apply: bool = True) -> None:
        self.root = root
        self.fail_on = fail_on
        self.apply = apply
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> None:
        self.argvs.append(list(argv))
        joined = " ".join(argv)
        if self.fail_on is not None and self.fail_on in joined:
            raise CommandError("targetcli failed", argv=argv, returncode=1, output="boom")
        if self.apply and argv[2] == "create" and argv[1].endswith("/luns"):
            wwpn = argv[1].split("/")[2]
            lun = self.root / "sys/kernel/config/target/vhost" / wwpn / "tpgt_1/lun/lun_0"
            lun.mkdir(parents=True)


PLAN = render_lio(LioDisk("vol0", Path("/dev/rbd0")))


def test_lio_target_sets_up_then_tears_down(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    with LioTarget(PLAN, runner=kernel, root=tmp_path):
        assert kernel.argvs == PLAN.setup
    assert kernel.argvs[3:] == PLAN.teardown


def test_partial_setup_failure_undoes_only_what_was_created(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, fail_on="/luns create")
    with (
        pytest.raises(CommandError, match="targetcli failed"),
        LioTarget(PLAN, runner=kernel, root=tmp_path),
    ):
        pytest.fail("the block must not run")
    assert kernel.argvs[3:] == PLAN.teardown[1:]  # target and backstore; the LUN never was


def test_first_step_failing_leaves_nothing_to_undo(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, fail_on="/backstores/block create")
    with pytest.raises(CommandError), LioTarget(PLAN, runner=kernel, root=tmp_path):
        pass
    assert kernel.argvs == PLAN.setup[:1]


def test_success_without_the_lun_in_configfs_is_an_error(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, apply=False)
    with (
        pytest.raises(HostError, match="targetcli reported success"),
        LioTarget(PLAN, runner=kernel, root=tmp_path),
    ):
        pass
    assert kernel.argvs[3:] == PLAN.teardown


def test_teardown_tries_every_step_and_reports_failures(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, fail_on="/vhost delete")
    with (
        pytest.raises(HostError, match="left: targetcli /vhost delete naa"),
        LioTarget(PLAN, runner=kernel, root=tmp_path),
    ):
        pass
    assert kernel.argvs[3:] == PLAN.teardown


def test_exception_in_block_is_not_masked_by_teardown_failure(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, fail_on="luns delete")
    with pytest.raises(KeyboardInterrupt), LioTarget(PLAN, runner=kernel, root=None):
        raise KeyboardInterrupt
    assert kernel.argvs[3:] == PLAN.teardown


def test_run_command_maps_failures() -> None:
    run_command(["true"])
    with pytest.raises(CommandError) as err:
        run_command(["sh", "-c", "echo 'No such path /vhost' >&2; exit 3"])
    assert err.value.returncode == 3 and "No such path /vhost" in err.value.output
    with pytest.raises(HostError, match="is not installed"):
        run_command(["/nonexistent/targetcli", "ls"])
