"""Unit tests of the micro Ceph cluster: conf rendering, QEMU rbd syntax, status parsing,
how Ceph tools are run, the admin-socket protocol, and the refusals that protect user data.

Real daemons are in tests/integration/test_ceph_cluster.py.
"""

from __future__ import annotations

import configparser
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from vmlab.ceph import proc, rbd
from vmlab.ceph.cluster import MicroCluster
from vmlab.ceph.conf import OSD, ClusterSettings, Layout, render_ceph_conf
from vmlab.ceph.daemons import asok_command
from vmlab.ceph.info import ClusterInfo, read_key
from vmlab.ceph.proc import INSTALL_HINT, ceph_cli, netns_prefix, run_tool
from vmlab.ceph.status import parse_cluster_report
from vmlab.cli.ceph import parse_size
from vmlab.errors import CommandError, HostError, VmlabError
from vmlab.proc import Completed

# Recorded verbatim on Debian 12 (Ceph 16.2.15) from a vmlab micro cluster after
# `rbd create vmlab/img0 --size 64M` and `ceph osd set noout`.
STATUS_JSON = (
    '{"fsid":"f73c66fd-a8ea-4ec3-af1d-ab4569afe24f","health":{"status":"HEALTH_WARN","checks"'
    ':{"OSDMAP_FLAGS":{"severity":"HEALTH_WARN","summary":{"message":"noout flag(s) set","cou'
    'nt":5},"muted":false}},"mutes":[]},"election_epoch":3,"quorum":[0],"quorum_names":["a"],'
    '"quorum_age":11,"monmap":{"epoch":1,"min_mon_release_name":"pacific","num_mons":1},"osdm'
    'ap":{"epoch":15,"num_osds":1,"num_up_osds":1,"osd_up_since":1795711878,"num_in_osds":1,"'
    'osd_in_since":1795711873,"num_remapped_pgs":0},"pgmap":{"pgs_by_state":[{"state_name":"a'
    'ctive+clean","count":9}],"num_pgs":9,"num_pools":2,"num_objects":5,"data_bytes":73,"byte'
    's_used":304369664,"bytes_avail":10433048576,"bytes_total":10737418240},"fsmap":{"epoch":'
    '1,"by_rank":[],"up:standby":0},"mgrmap":{"available":true,"num_standbys":0,"modules":["i'
    'ostat"],"services":{}},"servicemap":{"epoch":1,"modified":"2026-11-26T16:51:13.633602+00'
    '00","services":{}},"progress_events":{}}'
)
DF_JSON = (
    '{"stats":{"total_bytes":10737418240,"total_avail_bytes":10433048576,"total_used_bytes":3'
    '04369664,"total_used_raw_bytes":304369664,"total_used_raw_ratio":0.028346633538603783,"n'
    'um_osds":1,"num_per_pool_osds":1,"num_per_pool_omap_osds":1},"stats_by_class":{"hdd":{"t'
    'otal_bytes":10737418240,"total_avail_bytes":10433048576,"total_used_bytes":304369664,"to'
    'tal_used_raw_bytes":304369664,"total_used_raw_ratio":0.028346633538603783}},"pools":[{"n'
    'ame":"vmlab","id":1,"stats":{"stored":73,"objects":5,"kb_used":12,"bytes_used":12288,"pe'
    'rcent_used":1.2416900290190824e-06,"max_avail":9896177664}},{"name":"device_health_metri'
    'cs","id":2,"stats":{"stored":0,"objects":0,"kb_used":0,"bytes_used":0,"percent_used":0,"'
    'max_avail":9896177664}}]}'
)
POOLS_JSON = (
    '[{"pool_id":1,"pool_name":"vmlab","create_time":"2026-11-26T16:51:13.998077+0000","flags'
    '":8193,"flags_names":"hashpspool,selfmanaged_snaps","type":1,"size":1,"min_size":1,"crus'
    'h_rule":0,"peering_crush_bucket_count":0,"peering_crush_bucket_target":0,"peering_crush_'
    'bucket_barrier":0,"peering_crush_bucket_mandatory_member":2147483647,"object_hash":2,"pg'
    '_autoscale_mode":"off","pg_num":8,"pg_placement_num":8,"pg_placement_num_target":8,"pg_n'
    'um_target":8,"pg_num_pending":8,"last_pg_merge_meta":{"source_pgid":"0.0","ready_epoch":'
    '0,"last_epoch_started":0,"last_epoch_clean":0,"source_version":"0\'0","target_version":"0'
    '\'0"},"last_change":"12","last_force_op_resend":"0","last_force_op_resend_prenautilus":"0'
    '","last_force_op_resend_preluminous":"0","auid":0,"snap_mode":"selfmanaged","snap_seq":3'
    ',"snap_epoch":12,"pool_snaps":[],"removed_snaps":"[]","quota_max_bytes":0,"quota_max_obj'
    'ects":0,"tiers":[],"tier_of":-1,"read_tier":-1,"write_tier":-1,"cache_mode":"none","targ'
    'et_max_bytes":0,"target_max_objects":0,"cache_target_dirty_ratio_micro":400000,"cache_ta'
    'rget_dirty_high_ratio_micro":600000,"cache_target_full_ratio_micro":800000,"cache_min_fl'
    'ush_age":0,"cache_min_evict_age":0,"erasure_code_profile":"","hit_set_params":{"type":"n'
    'one"},"hit_set_period":0,"hit_set_count":0,"use_gmt_hitset":true,"min_read_recency_for_p'
    'romote":0,"min_write_recency_for_promote":0,"hit_set_grade_decay_rate":0,"hit_set_search'
    '_last_n":0,"grade_table":[],"stripe_width":0,"expected_num_objects":0,"fast_read":false,'
    '"options":{},"application_metadata":{"rbd":{}}},{"pool_id":2,"pool_name":"device_health_'
    'metrics","create_time":"2026-11-26T16:51:18.081221+0000","flags":1,"flags_names":"hashps'
    'pool","type":1,"size":1,"min_size":1,"crush_rule":0,"peering_crush_bucket_count":0,"peer'
    'ing_crush_bucket_target":0,"peering_crush_bucket_barrier":0,"peering_crush_bucket_mandat'
    'ory_member":2147483647,"object_hash":2,"pg_autoscale_mode":"off","pg_num":1,"pg_placemen'
    't_num":1,"pg_placement_num_target":1,"pg_num_target":1,"pg_num_pending":1,"last_pg_merge'
    '_meta":{"source_pgid":"0.0","ready_epoch":0,"last_epoch_started":0,"last_epoch_clean":0,'
    '"source_version":"0\'0","target_version":"0\'0"},"last_change":"10","last_force_op_resend"'
    ':"0","last_force_op_resend_prenautilus":"0","last_force_op_resend_preluminous":"0","auid'
    '":0,"snap_mode":"selfmanaged","snap_seq":0,"snap_epoch":0,"pool_snaps":[],"removed_snaps'
    '":"[]","quota_max_bytes":0,"quota_max_objects":0,"tiers":[],"tier_of":-1,"read_tier":-1,'
    '"write_tier":-1,"cache_mode":"none","target_max_bytes":0,"target_max_objects":0,"cache_t'
    'arget_dirty_ratio_micro":400000,"cache_target_dirty_high_ratio_micro":600000,"cache_targ'
    'et_full_ratio_micro":800000,"cache_min_flush_age":0,"cache_min_evict_age":0,"erasure_cod'
    'e_profile":"","hit_set_params":{"type":"none"},"hit_set_period":0,"hit_set_count":0,"use'
    '_gmt_hitset":true,"min_read_recency_for_promote":0,"min_write_recency_for_promote":0,"hi'
    't_set_grade_decay_rate":0,"hit_set_search_last_n":0,"grade_table":[],"stripe_width":0,"e'
    'xpected_num_objects":0,"fast_read":false,"options":{"pg_num_max":32,"pg_num_min":1},"app'
    'lication_metadata":{"mgr_devicehealth":{}}}]'
)


def settings(bind: str = "127.0.0.1", ports: tuple[int, int] = (3300, 6789)) -> ClusterSettings:
    return ClusterSettings(
        fsid="8c0e5d1e-0000-4000-8000-000000000001",
        bind_addr=bind,
        mon_v2_port=ports[0],
        mon_v1_port=ports[1],
        osd_size_bytes=10 << 30,
        osd_uuid="8c0e5d1e-0000-4000-8000-000000000002",
    )


def parsed_conf(text: str) -> configparser.ConfigParser:
    conf = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    conf.read_string(text)
    return conf


# ------------------------------------------------------------------ ceph.conf


def test_conf_binds_every_daemon_to_the_address_and_carries_the_lab_settings(
    tmp_path: Path,
) -> None:
    text = render_ceph_conf(settings("10.77.0.1", (3301, 3401)), tmp_path, tmp_path / "run")
    conf = parsed_conf(text)
    g = conf["global"]
    assert g["mon host"] == "[v2:10.77.0.1:3301,v1:10.77.0.1:3401]"
    assert g["public addr"] == "10.77.0.1"
    assert g["cluster addr"] == "10.77.0.1"
    assert "127.0.0.1" not in text
    assert g["fsid"] == "8c0e5d1e-0000-4000-8000-000000000001"
    assert g["osd pool default size"] == "1"
    assert g["osd pool default min size"] == "1"
    assert g["mon warn on pool no redundancy"] == "false"
    assert g["mon data avail warn"] == "2"
    assert g["paxos propose interval"] == "0.05"
    assert g["auth client required"] == "cephx"
    assert conf["osd"]["osd data"] == f"{tmp_path}/osd/$cluster-$id"
    assert conf["osd"]["osd objectstore"] == "bluestore"
    assert int(conf["osd"]["bluestore block size"]) == 10 << 30
    assert int(conf["osd"]["bluestore cache size"]) <= 64 << 20
    assert conf["mon"]["mon data"] == f"{tmp_path}/mon/$cluster-$id"
    assert conf["mgr"]["mgr data"] == f"{tmp_path}/mgr/$cluster-$id"
    for daemon in ("mon", "mgr", "osd"):
        assert conf[daemon]["admin socket"] == f"{tmp_path}/run/$cluster-$name.asok"
        assert conf[daemon]["pid file"] == f"{tmp_path}/run/$cluster-$name.pid"
        assert conf[daemon]["log file"] == f"{tmp_path}/log/$cluster-$name.log"
    # clients (QEMU, rbd) find the key through the conf; they get no admin socket of their own
    assert conf["client"]["keyring"] == f"{tmp_path}/ceph.client.admin.keyring"
    assert "admin socket" not in conf["client"]


def test_conf_leaves_bluestore_block_path_unset(tmp_path: Path) -> None:
    text = render_ceph_conf(settings(), tmp_path, tmp_path / "run")
    keys = {k for section in parsed_conf(text).values() for k in section}
    assert "bluestore block path" not in keys
    assert "bluestore_block_path" not in keys


def test_settings_round_trip_through_json() -> None:
    s = settings()
    assert ClusterSettings.from_json(s.to_json()) == s
    assert s.mon_host == "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"


# ------------------------------------------------------------------ QEMU rbd syntax


def info(conf: str = "/srv/lab/ceph/ceph.conf", netns: str | None = None) -> ClusterInfo:
    return ClusterInfo(
        conf_path=Path(conf),
        keyring_path=Path(conf).with_name("ceph.client.admin.keyring"),
        fsid="f",
        mon_addr="[v2:127.0.0.1:3300,v1:127.0.0.1:6789]",
        pool="vmlab",
        state_dir=Path(conf).parent,
        netns=netns,
    )


def test_qemu_uri_plain() -> None:
    assert (
        info().qemu_rbd_uri("vmlab", "disk0")
        == "rbd:vmlab/disk0:conf=/srv/lab/ceph/ceph.conf:id=admin"
    )


def test_qemu_uri_escapes_colons_and_backslashes_in_paths_and_names() -> None:
    uri = info("/srv/a:b/c\\d/ceph.conf").qemu_rbd_uri("vmlab", "img:1/x=y")
    assert uri == r"rbd:vmlab/img\:1\/x\=y:conf=/srv/a\:b/c\\d/ceph.conf:id=admin"


def test_qemu_uri_leaves_commas_to_the_argv_layer() -> None:
    assert ":conf=/srv/a,b/ceph.conf:" in info("/srv/a,b/ceph.conf").qemu_rbd_uri("p", "i")


def test_qemu_uri_refuses_at_signs_it_cannot_express() -> None:
    with pytest.raises(VmlabError, match="cannot be written") as err:
        info().qemu_rbd_uri("vmlab", "img@snap")
    assert err.value.hint is not None
    assert "-blockdev driver=rbd" in err.value.hint
    with pytest.raises(VmlabError, match="conf path"):
        info("/srv/a@b/ceph.conf").qemu_rbd_uri("vmlab", "img")


def test_info_repr_names_paths_but_never_key_material(tmp_path: Path) -> None:
    keyring = tmp_path / "ceph.client.admin.keyring"
    secret = "AQBhwQxpAAAAABAA7m0S3cr3tK3yM4t3r1aLzzzzzz=="
    keyring.write_text(f"[client.admin]\n\tkey = {secret}\n")
    i = ClusterInfo(
        conf_path=tmp_path / "ceph.conf",
        keyring_path=keyring,
        fsid="f",
        mon_addr="m",
        pool="vmlab",
        state_dir=tmp_path,
    )
    for text in (repr(i), str(i)):
        assert secret not in text
        assert str(keyring) in text
        assert "ceph.conf" in text


def test_client_commands_run_in_the_cluster_namespace() -> None:
    assert netns_prefix(info().netns) == []
    assert netns_prefix(info(netns="lab1").netns) == ["ip", "netns", "exec", "lab1"]
    assert info().ceph_args() == [
        "--conf", "/srv/lab/ceph/ceph.conf",
        "--id", "admin",
        "--keyring", "/srv/lab/ceph/ceph.client.admin.keyring",
    ]  # fmt: skip


def test_ceph_cli_runs_in_the_namespace_with_the_connection_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], dict[str, object]]] = []

    def fake_run(argv: list[str], **kwargs: object) -> Completed:
        calls.append((list(argv), kwargs))
        return Completed(tuple(argv), 0, b"{}", b"")

    monkeypatch.setattr(proc, "run", fake_run)
    assert ceph_cli(info(netns="lab1"), ["status"], what="status", timeout_s=5) == "{}"
    ((argv, kwargs),) = calls
    assert argv == [
        "ip", "netns", "exec", "lab1",
        "ceph", *info().ceph_args(), "--connect-timeout=10", "status",
    ]  # fmt: skip
    assert kwargs["what"] == "ceph status"
    assert kwargs["timeout_s"] == 5
    assert kwargs["missing_hint"] == INSTALL_HINT


def test_a_ceph_tool_that_hangs_points_at_the_daemons() -> None:
    with pytest.raises(CommandError, match="no answer test") as err:
        run_tool(["sleep", "5"], what="no answer test", timeout_s=0.2)
    assert err.value.returncode is None
    assert "vmlab ceph status" in (err.value.hint or "")
    with pytest.raises(HostError) as missing:
        run_tool(["vmlab-no-such-ceph-tool"], what="x")
    assert missing.value.hint == INSTALL_HINT


# ------------------------------------------------------------------ status parsing


def test_report_from_recorded_ceph_output() -> None:
    report = parse_cluster_report(STATUS_JSON, DF_JSON, POOLS_JSON)
    assert report.fsid == "f73c66fd-a8ea-4ec3-af1d-ab4569afe24f"
    assert report.health == "HEALTH_WARN"
    assert report.health_checks == ("OSDMAP_FLAGS: noout flag(s) set",)
    assert (report.num_osds, report.num_up_osds, report.num_in_osds) == (1, 1, 1)
    assert report.pg_states == (("active+clean", 9),)
    assert report.total_bytes == 10737418240
    assert report.used_bytes == 304369664
    assert report.avail_bytes == 10433048576
    assert report.mgr_available
    pools = {p.name: p for p in report.pools}
    assert set(pools) == {"vmlab", "device_health_metrics"}
    vmlab = pools["vmlab"]
    assert (vmlab.pool_id, vmlab.size, vmlab.min_size, vmlab.pg_num) == (1, 1, 1, 8)
    assert vmlab.applications == ("rbd",)
    assert (vmlab.objects, vmlab.stored_bytes) == (5, 73)
    assert vmlab.max_avail_bytes == 9896177664
    assert pools["device_health_metrics"].applications == ("mgr_devicehealth",)


def test_report_of_a_healthy_cluster_has_no_checks() -> None:
    status = json.loads(STATUS_JSON)
    status["health"] = {"status": "HEALTH_OK", "checks": {}, "mutes": []}
    report = parse_cluster_report(json.dumps(status), DF_JSON, POOLS_JSON)
    assert report.health == "HEALTH_OK"
    assert report.health_checks == ()


def test_report_rejects_garbage_with_a_vmlab_error() -> None:
    with pytest.raises(VmlabError, match="unexpected output from the ceph CLI"):
        parse_cluster_report("not json", DF_JSON, POOLS_JSON)
    with pytest.raises(VmlabError):
        parse_cluster_report(STATUS_JSON, DF_JSON, '[{"pool_name": "x"}]')


# ------------------------------------------------------------------ admin sockets
# (zombies and pid reuse: tests/unit/test_proc.py, for vmlab.proc.alive)


def test_admin_socket_protocol(tmp_path: Path) -> None:
    """A JSON command and a NUL in; a big-endian u32 length and the answer out."""
    path = tmp_path / "x.asok"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    received: list[bytes] = []
    answer = json.dumps({"state": "active", "pad": "x" * 100_000}).encode()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\0"):
                data += conn.recv(4096)
            received.append(data)
            conn.sendall(len(answer).to_bytes(4, "big") + answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        out = asok_command(path, {"prefix": "status"}, timeout_s=5)
    finally:
        thread.join(timeout=5)
        server.close()
    assert json.loads(received[0][:-1]) == {"prefix": "status"}
    assert json.loads(out)["state"] == "active"


def test_admin_socket_nobody_listening_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        asok_command(tmp_path / "none.asok", {"prefix": "version"}, timeout_s=1)


# ------------------------------------------------------------------ guard rails


def test_cluster_refuses_what_ceph_would_misread(tmp_path: Path) -> None:
    with pytest.raises(VmlabError, match="IPv6"):
        MicroCluster(tmp_path, bind_addr="::1")
    with pytest.raises(VmlabError, match="bad bind address"):
        MicroCluster(tmp_path, bind_addr="localhost")
    with pytest.raises(VmlabError, match=r"ceph\.conf cannot hold"):
        MicroCluster(tmp_path / "a,b")  # ceph -c splits a search list at commas
    with pytest.raises(VmlabError, match="minimum"):
        MicroCluster(tmp_path, osd_size_bytes=1 << 20)


def test_long_state_dirs_keep_admin_sockets_under_the_unix_path_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMLAB_RUNTIME", str(tmp_path / "rt"))
    short = Layout.of(tmp_path / "ceph")
    assert short.run_dir == tmp_path / "ceph" / "run"
    deep = Layout.of(tmp_path / ("d" * 120) / "ceph")
    assert deep.run_dir.parent == tmp_path / "rt"
    assert len(str(deep.asok(OSD))) <= 107
    assert Layout.of(tmp_path / ("d" * 120) / "ceph").run_dir == deep.run_dir  # stable


def test_purge_refuses_a_directory_that_is_not_a_cluster(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(VmlabError, match="refusing to delete"):
        MicroCluster(precious).purge()
    assert (precious / "thesis.tex").exists()


def test_purge_and_down_of_nothing_are_no_ops(tmp_path: Path) -> None:
    MicroCluster(tmp_path / "never").down()
    MicroCluster(tmp_path / "never").purge()
    assert not (tmp_path / "never").exists()


def test_status_of_no_cluster(tmp_path: Path) -> None:
    st = MicroCluster(tmp_path / "none").status()
    assert not st.exists
    assert not st.running
    assert st.health == "UNKNOWN"
    assert [d.name for d in st.daemons] == ["mon.a", "mgr.x", "osd.0"]


def test_remove_refuses_images_vmlab_did_not_create(tmp_path: Path) -> None:
    images = rbd.RbdImages(info(str(tmp_path / "ceph.conf")))
    with pytest.raises(VmlabError, match="not created by vmlab"):
        images.remove("vmlab", "someone-elses")
    assert json.loads((tmp_path / rbd.REGISTRY_NAME).read_text())["images"] == []


def test_krbd_preflight_explains_a_missing_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rbd, "SYS_BUS_RBD", tmp_path / "sys-bus-rbd")
    failed = subprocess.CompletedProcess(
        ["modprobe", "rbd"], 1, b"", b"modprobe: FATAL: Module rbd not found in directory /lib/x\n"
    )
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        return failed

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(HostError, match="Module rbd not found") as err:
        rbd.krbd_preflight()
    assert calls == [["modprobe", "rbd"]]
    assert "/sys/bus/rbd is absent" in str(err.value)
    assert err.value.hint is not None
    assert "qemu_rbd_uri" in err.value.hint
    assert os.uname().release in err.value.hint


def test_krbd_preflight_passes_when_the_driver_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sys-bus-rbd").mkdir()
    monkeypatch.setattr(rbd, "SYS_BUS_RBD", tmp_path / "sys-bus-rbd")
    rbd.krbd_preflight()


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 << 30), ("512M", 512 << 20), ("2GiB", 2 << 30), ("4096", 4096), ("1t", 1 << 40)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(VmlabError, match="bad size"):
        parse_size("ten gigs")


def test_read_key_finds_the_entitys_key_and_names_the_file_when_it_cannot(tmp_path: Path) -> None:
    keyring = tmp_path / "ceph.client.bench.keyring"
    keyring.write_text(
        "[client.admin]\n\tkey = QURNSU4=\n[client.bench]\n"
        '\tkey = QkVOQ0g=\n\tcaps mon = "allow r"\n'
    )
    assert read_key(keyring, "client.bench") == b"BENCH"
    assert read_key(keyring, "client.admin") == b"ADMIN"
    with pytest.raises(HostError, match=r"has no key for client\.other") as info:
        read_key(keyring, "client.other")
    assert "client_id" in (info.value.hint or "")
    with pytest.raises(HostError, match=r"cannot read the Ceph keyring .*missing"):
        read_key(tmp_path / "missing", "client.admin")
    keyring.write_text("[client.bench]\nkey = not base64!\n")
    with pytest.raises(HostError, match="not base64"):
        read_key(keyring, "client.bench")


def fake_sys_bus_rbd(root: Path, mapped: dict[str, tuple[str, str]]) -> Path:
    for dev_id, (pool, name) in mapped.items():
        entry = root / "devices" / dev_id
        entry.mkdir(parents=True)
        (entry / "pool").write_text(pool + "\n")
        (entry / "name").write_text(name + "\n")
    return root


def test_krbd_devices_reads_the_mappings_of_one_image_from_sysfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysfs = {"0": ("vmlab", "a"), "1": ("vmlab", "b"), "3": ("vmlab", "a"), "4": ("other", "a")}
    monkeypatch.setattr(rbd, "SYS_BUS_RBD", fake_sys_bus_rbd(tmp_path / "rbd", sysfs))
    assert rbd.krbd_devices("vmlab", "a") == [Path("/dev/rbd0"), Path("/dev/rbd3")]
    assert rbd.krbd_devices("vmlab", "none") == []


@pytest.mark.parametrize("udev", [True, False])
def test_a_map_that_timed_out_after_the_kernel_mapped_is_unmapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, udev: bool
) -> None:
    """Found in L1 (no udevd): rbd waited for udev's event forever, the kernel had mapped the
    image, and the watch it left kept the image from being removed."""
    monkeypatch.setattr(rbd, "SYS_BUS_RBD", fake_sys_bus_rbd(tmp_path / "rbd", {"2": ("p", "i")}))
    control = tmp_path / "udev-control"
    if udev:
        control.touch()
    monkeypatch.setattr(rbd, "UDEV_CONTROL", control)
    calls: list[list[str]] = []

    def fake_rbd_cli(_info: object, args: list[str], **_: object) -> str:
        calls.append(args[1:])
        if args[1:3] == ["device", "map"]:
            raise CommandError(
                "rbd device map did not finish within 60 s", argv=args, returncode=None
            )
        return ""

    monkeypatch.setattr(rbd, "rbd_cli", fake_rbd_cli)
    with pytest.raises(CommandError, match="did not finish"):
        rbd.RbdImages(info(str(tmp_path / "ceph.conf"))).map_krbd("p", "i")
    noudev = [] if udev else ["--options", "noudev"]
    assert calls == [
        ["device", "map", *noudev, "p/i"],
        ["device", "unmap", *noudev, "/dev/rbd2"],
    ]
