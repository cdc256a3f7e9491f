"""The NoCloud seed (templates, YAML, ISO) and the cloud-init readiness wait, without a guest."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko
import pytest
import yaml

from vmlab.errors import GuestError, HostError, SpecError
from vmlab.guest import cloudinit as ci
from vmlab.guest.ssh import CommandResult
from vmlab.spec import parse_spec

CLIENT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxNL1f6R7n4Y2ZAt6wQ1O8Xg1xJmLq0pQ3FqCq1Lq7K lab"
MAC = "52:54:00:12:34:56"


@pytest.fixture(scope="module")
def host_key() -> ci.HostKey:
    return ci.generate_host_key()


@pytest.fixture
def config(host_key: ci.HostKey) -> ci.SeedConfig:
    return ci.SeedConfig(
        instance_id="vmlab-0123456789abcdef",
        authorized_keys=(CLIENT_KEY,),
        host_key=host_key,
        network=ci.NetworkConfig(mac=MAC),
    )


def parsed(files: ci.SeedFiles) -> dict[str, dict[str, object]]:
    return ci.validate_seed(files)


# --- host key ---------------------------------------------------------------------------------


def test_host_key_public_line_matches_private_half(host_key: ci.HostKey) -> None:
    private = paramiko.Ed25519Key.from_private_key(io.StringIO(host_key.private_openssh))
    assert host_key.public_line == f"ssh-ed25519 {private.get_base64()}"
    assert ci.generate_host_key().public_line != host_key.public_line


# --- user-data --------------------------------------------------------------------------------


def test_user_data_for_root(config: ci.SeedConfig, host_key: ci.HostKey) -> None:
    files = ci.render_seed(config)
    assert files.user_data.startswith("#cloud-config\n")
    user = parsed(files)["user-data"]
    assert user["hostname"] == "vmlab"
    assert user["disable_root"] is False
    assert user["ssh_authorized_keys"] == [CLIENT_KEY]
    assert "users" not in user  # the image's default user stays; root gets the key
    assert user["ssh_deletekeys"] is True
    assert user["ssh_keys"] == {
        "ed25519_private": host_key.private_openssh,
        "ed25519_public": host_key.public_line,
    }
    assert user["locale"] == "C.UTF-8"
    assert user["bootcmd"] == [["sh", "-c", f"echo {ci.CLOUD_READY_MARKER} > /dev/ttyS0 || true"]]
    for absent in ("packages", "package_update", "runcmd", "power_state"):
        assert absent not in user


def test_user_data_for_another_user(config: ci.SeedConfig) -> None:
    user = parsed(ci.render_seed(replace(config, user="bench")))["user-data"]
    assert user["users"] == [
        {
            "name": "bench",
            "lock_passwd": True,
            "shell": "/bin/sh",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": [CLIENT_KEY],
        }
    ]
    assert "disable_root" not in user
    assert "ssh_authorized_keys" not in user


def test_user_data_packages_runcmd_power_state_and_extra(config: ci.SeedConfig) -> None:
    tricky = "echo \"a: b\" > /tmp/x # {not: yaml} [1, 2] \\ 'q' \n second line"
    cfg = replace(
        config,
        packages=("fio", "nvme-cli"),
        runcmd=(tricky, ["fio", "--version"]),
        power_state=ci.PowerState(mode="reboot", timeout_s=5),
        ready_marker=None,
        extra={"write_files": [{"path": "/etc/vmlab", "content": "x: 1\n"}]},
    )
    user = parsed(ci.render_seed(cfg))["user-data"]
    assert user["packages"] == ["fio", "nvme-cli"]
    assert user["package_update"] is True
    assert user["runcmd"] == [tricky, ["fio", "--version"]]  # survives YAML exactly
    assert user["power_state"] == {
        "mode": "reboot",
        "delay": "now",
        "timeout": 5,
        "message": "vmlab: cloud-init finished",
        "condition": True,
    }
    assert user["write_files"] == [{"path": "/etc/vmlab", "content": "x: 1\n"}]
    assert "bootcmd" not in user


def test_extra_keys_cannot_override_rendered_ones(config: ci.SeedConfig) -> None:
    with pytest.raises(SpecError, match="clash"):
        ci.render_seed(replace(config, extra={"ssh_keys": {}}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hostname": "bad host\nx: 1"}, "hostname"),
        ({"user": "Root; rm"}, "login name"),
        ({"instance_id": "a b"}, "instance-id"),
        ({"authorized_keys": ()}, "no authorized key"),
        ({"authorized_keys": ("ssh-ed25519 AAAA\nruncmd: [reboot]",)}, "OpenSSH public key"),
        ({"network": ci.NetworkConfig(mac="52:54:00:12:34")}, "network.mac"),
        ({"ready_marker": "a b"}, "ready_marker"),
    ],
)
def test_invalid_seed_config_is_refused(
    config: ci.SeedConfig, change: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        ci.render_seed(replace(config, **change))  # type: ignore[arg-type]


def test_validate_seed_rejects_broken_files(config: ci.SeedConfig) -> None:
    files = ci.render_seed(config)
    with pytest.raises(SpecError, match="#cloud-config"):
        ci.validate_seed(replace(files, user_data=files.user_data.replace("#cloud-config", "#")))
    with pytest.raises(SpecError, match="mapping"):
        ci.validate_seed(replace(files, user_data="#cloud-config\n- a list\n"))
    with pytest.raises(SpecError, match="not valid YAML"):
        ci.validate_seed(replace(files, meta_data="instance-id: [unclosed\n"))
    with pytest.raises(SpecError, match="instance-id"):
        ci.validate_seed(replace(files, meta_data="local-hostname: x\n"))
    with pytest.raises(SpecError, match="version 2"):
        ci.validate_seed(replace(files, network_config="version: 1\nconfig: []\n"))


# --- a seed that cannot be made: SpecError naming the field ------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        # characters YAML cannot carry even quoted (a spec's "\x7f" or "\ud800" escapes)
        ({"packages": ("fio\x7f",)}, "packages[0]"),
        ({"runcmd": ("echo ok", "echo \ud800")}, "runcmd[1]"),
        ({"runcmd": (["sh", "-c", "echo \x9f"],)}, "runcmd[0][2]"),
        ({"power_state": ci.PowerState(message="done\ufffe")}, "power_state.message"),
        ({"extra": {"write_files": [{"content": "\x80"}]}}, "extra['write_files']"),
        ({"network": ci.NetworkConfig(mac=MAC, dns=("10.0.2.3\udc80",))}, "network.dns[0]"),
        # the wrong types
        ({"packages": "fio"}, "packages"),  # one string, not a list of them
        ({"packages": None}, "packages"),
        ({"packages": ("fio", 5)}, "packages[1]"),
        ({"runcmd": (5,)}, "runcmd[0]"),
        ({"runcmd": (["fio", 5],)}, "runcmd[0][1]"),
        ({"authorized_keys": CLIENT_KEY}, "authorized_keys"),
        ({"extra": {"write_files": object()}}, "extra['write_files']"),
        ({"extra": {5: "x"}}, "extra[5]"),
    ],
)
def test_a_seed_that_cannot_be_rendered_is_a_spec_error(
    config: ci.SeedConfig, change: dict[str, object], field: str
) -> None:
    with pytest.raises(SpecError) as info:
        ci.render_seed(replace(config, **change))  # type: ignore[arg-type]
    problems = info.value.problems
    assert any(p.startswith(f"{field}: ") for p in problems), problems
    assert info.value.hint


def test_characters_yaml_cannot_carry_stop_at_the_spec_edge_and_at_the_seed(
    config: ci.SeedConfig, tmp_path: Path
) -> None:
    text = (
        "name: t\njobs: reference\nguest:\n  image: {kind: cloud, source: /x.qcow2, "
        'packages: ["fio\\x7f"]}\n  disks: [{name: data, backend: {type: file}}]\n'
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(yaml.safe_load(text))
    assert any("guest.image.cloud.packages: item 0: " in p for p in refused.value.problems)
    # The seed writer still refuses it when handed one some other way.
    with pytest.raises(SpecError, match=r"packages\[0\]: 'fio\\x7f' holds U\+007F"):
        ci.make_seed(replace(config, packages=("fio\x7f",)), tmp_path / "seed.iso")
    assert not (tmp_path / "seed.iso").exists()


def test_a_missing_seed_template_is_a_host_error(
    config: ci.SeedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ci.TEMPLATES, "meta-data", "cloudinit/no-such.j2")
    with pytest.raises(HostError, match=r"cloudinit/no-such\.j2") as info:
        ci.render_seed(config)
    assert info.value.hint


# --- meta-data and network-config --------------------------------------------------------------


def test_meta_data(config: ci.SeedConfig) -> None:
    meta = parsed(ci.render_seed(config))["meta-data"]
    assert meta == {"instance-id": "vmlab-0123456789abcdef", "local-hostname": "vmlab"}
    ids = {ci.new_instance_id() for _ in range(20)}
    assert len(ids) == 20
    assert ci.new_instance_id("cafe") == "vmlab-cafe"


def test_network_config_static_user_mode(config: ci.SeedConfig) -> None:
    net = parsed(ci.render_seed(config))["network-config"]
    assert net == {
        "version": 2,
        "ethernets": {
            "mgmt": {
                "match": {"macaddress": MAC},
                "dhcp4": False,
                "addresses": ["10.0.2.15/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.0.2.2"}],
                "nameservers": {"addresses": ["10.0.2.3"]},
            }
        },
    }


def test_network_config_dhcp(config: ci.SeedConfig) -> None:
    cfg = replace(config, network=ci.NetworkConfig(mac=MAC, dhcp=True))
    net = parsed(ci.render_seed(cfg))["network-config"]
    assert net["ethernets"] == {"mgmt": {"match": {"macaddress": MAC}, "dhcp4": True}}


# --- the ISO ---------------------------------------------------------------------------------


def test_seed_iso_has_label_and_files(config: ci.SeedConfig, tmp_path: Path) -> None:
    files = ci.render_seed(config)
    iso = ci.write_seed_iso(files, tmp_path / "seed.iso")
    raw = iso.read_bytes()
    assert raw[0x8001:0x8006] == b"CD001"  # primary volume descriptor
    assert raw[0x8028 : 0x8028 + 32].rstrip() == b"cidata"  # its volume identifier
    assert b"CD001" in raw[0x8801:0x8806] + raw[0x9001:0x9006]  # the Joliet descriptor follows
    label, content = ci.read_seed_iso(iso)
    assert label == "cidata"
    assert content == files.as_dict()
    assert not list(tmp_path.glob(".*.part"))


def test_make_seed_keeps_a_redacted_copy(config: ci.SeedConfig, tmp_path: Path) -> None:
    iso = ci.make_seed(config, tmp_path / "seed.iso")
    copy = (tmp_path / "seed.iso.d" / "user-data").read_text()
    assert "<redacted>" in copy
    assert "OPENSSH PRIVATE KEY" not in copy
    assert config.host_key.public_line in copy
    assert "OPENSSH PRIVATE KEY" in ci.read_seed_iso(iso)[1]["user-data"]


# --- cloud-init status ----------------------------------------------------------------------

STATUS_DONE_22 = json.dumps(
    {
        "boot_status_code": "enabled-by-generator",
        "datasource": "nocloud",
        "detail": "DataSourceNoCloud [seed=/dev/vdc][dsmode=net]",
        "errors": [],
        "last_update": "Thu, 26 Nov 2026 17:30:00 +0000",
        "status": "done",
    }
)
STATUS_ERROR_22 = json.dumps(
    {
        "detail": "('write-files', TypeError(\"'int' object is not iterable\"))",
        "errors": ["('write-files', TypeError(\"'int' object is not iterable\"))"],
        "status": "error",
    }
)
STATUS_DEGRADED_24 = json.dumps(
    {
        "status": "done",
        "extended_status": "degraded done",
        "errors": [],
        "recoverable_errors": {"WARNING": ["x"]},
        "detail": "DataSourceNoCloud",
    }
)
STATUS_TEXT = """
status: error
boot_status_code: enabled-by-generator
detail:
('scripts-user', RuntimeError('Runparts: 1 failures'))
errors:
    - ('scripts-user', RuntimeError('Runparts: 1 failures'))
"""


def test_parse_status_forms() -> None:
    done = ci.parse_status(STATUS_DONE_22)
    assert (done.status, done.failed, done.running) == ("done", False, False)
    assert done.detail.startswith("DataSourceNoCloud")
    error = ci.parse_status(STATUS_ERROR_22)
    assert error.failed and "write-files" in error.errors[0]
    degraded = ci.parse_status(STATUS_DEGRADED_24)
    assert degraded.failed and degraded.extended_status == "degraded done"
    text = ci.parse_status(STATUS_TEXT)
    assert text.status == "error" and text.failed
    assert text.errors == ("('scripts-user', RuntimeError('Runparts: 1 failures'))",)
    assert ci.parse_status("..........\nstatus: done\n").failed is False
    with pytest.raises(GuestError, match="cannot read"):
        ci.parse_status("Traceback (most recent call last): boom")


@dataclass
class FakeTransport:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


Step = tuple[int, str, str] | Exception | str  # (exit, stdout, stderr) | raise | "drop"


@dataclass
class FakeClient:
    """Stands in for paramiko.SSHClient: one connection, with its scripted answers."""

    steps: list[Step]
    transport: FakeTransport = field(default_factory=FakeTransport)
    closed: bool = False

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.closed = True


class FakeSSH:
    """Plays scripted answers to the commands wait_cloud_init runs."""

    def __init__(self, steps: list[Step], name: str = "guest") -> None:
        self.client = FakeClient(steps)
        self.where = name
        self.commands: list[str] = []

    def close(self) -> None:
        self.client.close()

    def run(
        self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
    ) -> CommandResult:
        self.commands.append(command)
        if command.startswith("tail "):
            return CommandResult(command, 0, b"Cloud-init v. 22.4.2 finished with errors", b"")
        step = self.client.steps.pop(0)
        if step == "drop":
            self.client.transport.active = False
            return CommandResult(command, -1, b"", b"")
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, tuple)
        code, out, err = step
        return CommandResult(command, code, out.encode(), err.encode())


def test_wait_cloud_init_done() -> None:
    ssh = FakeSSH([(0, STATUS_DONE_22, "")])
    status = ci.wait_cloud_init(ssh, timeout_s=30)  # type: ignore[arg-type]
    assert status["status"] == "done"
    assert status["reconnects"] == 0
    assert ssh.commands == [ci.STATUS_JSON_CMD]


def test_wait_cloud_init_error_names_output_and_console(tmp_path: Path) -> None:
    ssh = FakeSSH([(1, STATUS_ERROR_22, "")])
    console = tmp_path / "serial.log"
    with pytest.raises(GuestError) as info:
        ci.wait_cloud_init(ssh, timeout_s=30, console_log=console)  # type: ignore[arg-type]
    assert "status error" in str(info.value)
    assert "write-files" in str(info.value)
    assert "finished with errors" in str(info.value)  # the tail of cloud-init-output.log
    assert info.value.hint is not None and str(console) in info.value.hint


def test_wait_cloud_init_degraded_fails() -> None:
    with pytest.raises(GuestError, match="degraded done"):
        ci.wait_cloud_init(FakeSSH([(2, STATUS_DEGRADED_24, "")]), timeout_s=30)  # type: ignore[arg-type]


def test_wait_cloud_init_old_cloud_init_falls_back_to_text() -> None:
    ssh = FakeSSH(
        [
            (2, "", "cloud-init: error: unrecognized arguments: --format json"),
            (0, "....\nstatus: done\ndetail:\nDataSourceNoCloud\n", ""),
        ]
    )
    assert ci.wait_cloud_init(ssh, timeout_s=30)["status"] == "done"  # type: ignore[arg-type]
    assert ssh.commands == [ci.STATUS_JSON_CMD, ci.STATUS_TEXT_CMD]


def test_wait_cloud_init_reconnects_after_a_reboot() -> None:
    first = FakeSSH(["drop"], name="before")
    second = FakeSSH([(0, STATUS_DONE_22, "")], name="after")
    asked: list[float] = []

    def reconnect(remaining_s: float) -> FakeSSH:
        asked.append(remaining_s)
        return second

    status = ci.wait_cloud_init(first, timeout_s=30, reconnect=reconnect)  # type: ignore[arg-type]
    assert status["reconnects"] == 1
    assert 0 < asked[0] <= 30
    assert first.client is second.client  # the caller's handle now talks to the new session
    assert first.where == "after"


def test_wait_cloud_init_drop_without_reconnect_fails() -> None:
    with pytest.raises(GuestError, match="dropped"):
        ci.wait_cloud_init(FakeSSH(["drop"]), timeout_s=30)  # type: ignore[arg-type]


def test_wait_cloud_init_timeout_on_live_connection() -> None:
    ssh = FakeSSH([GuestError("'cloud-init status' did not finish within 1 s")])
    with pytest.raises(GuestError, match="did not finish"):
        ci.wait_cloud_init(ssh, timeout_s=1)  # type: ignore[arg-type]


def test_wait_cloud_init_without_cloud_init() -> None:
    ssh = FakeSSH([(127, "", "sh: 1: cloud-init: not found")])
    with pytest.raises(GuestError, match="no cloud-init"):
        ci.wait_cloud_init(ssh, timeout_s=30)  # type: ignore[arg-type]


def test_check_instance_id() -> None:
    class IdSSH(FakeSSH):
        def run(
            self, command: str, *, timeout_s: float, check: bool = True, stdin: bytes | None = None
        ) -> CommandResult:
            return CommandResult(command, 0, b"vmlab-abc\n", b"")

    ci.check_instance_id(IdSSH([]), "vmlab-abc")  # type: ignore[arg-type]
    with pytest.raises(GuestError, match="instance-id"):
        ci.check_instance_id(IdSSH([]), "vmlab-other")  # type: ignore[arg-type]


def test_rendered_yaml_is_plain_data(config: ci.SeedConfig) -> None:
    """No YAML tags or anchors can sneak in through values: safe_load reads it all."""
    cfg = replace(config, runcmd=("!!python/object:os.system ['id']", "&a *a"))
    user = yaml.safe_load(ci.render_seed(cfg).user_data)
    assert user["runcmd"] == ["!!python/object:os.system ['id']", "&a *a"]
