"""The nested hypervisor: the spec model, the L1 plan (golden), the inner spec, L1's argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vmlab.errors import HostError, SpecError
from vmlab.guest.rootfs import RootfsImage
from vmlab.host import HostFacts, kernel_modules
from vmlab.nested.boot import L1Disks, l1_argv
from vmlab.nested.inner import bench_command, libvirt_script, mount_script
from vmlab.nested.plan import inner_case_id, inner_spec, l1_plans, with_nested
from vmlab.plan import plan
from vmlab.spec import NestedHypervisor, default_lab, load_spec, parse_spec

DATA = Path(__file__).parent.parent / "data"
GOLDEN = DATA / "golden" / "nested"
EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def spec_of(text: str):  # type: ignore[no-untyped-def]
    return parse_spec(yaml.safe_load(text), source=text)


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxNL1f6R7n4Y2ZAt6wQ1O8Xg1xJmLq0pQ3FqCq1Lq7K"
ONE = """\
name: one
hypervisor: {kind: nested}
guest: {disks: [{model: virtio-blk}]}
jobs: [{name: j, rw: randread}]
"""


def test_host_is_the_default_and_nested_has_debian_defaults() -> None:
    assert all(v.hypervisor == "host" for v in default_lab().variants)
    assert not default_lab().nested
    spec = spec_of(ONE)
    (variant,) = spec.variants
    assert spec.nested
    assert variant.hypervisor == NestedHypervisor(kernel="linux-image-amd64")
    assert variant.params == {}  # no axis: the case id is unchanged


def test_kernel_list_is_an_axis_and_makes_one_l1_each() -> None:
    spec = load_spec(EXAMPLES / "nested-kernels.yaml")
    cases = plan(spec)
    bpo = "linux-image-amd64-bookworm-backports"
    assert [c.id for c in cases] == ["linux-image-amd64", bpo]
    plans = l1_plans(spec, cases)
    assert [p.label for p in plans] == ["amd64", "amd64-bpo"]
    assert [p.hypervisor.kernel for p in plans] == [
        "linux-image-amd64",
        "linux-image-amd64/bookworm-backports",
    ]
    assert [dict(p.inner_ids) for p in plans] == [
        {"linux-image-amd64": "default"},
        {bpo: "default"},
    ]
    assert all("vhost_net" in p.modules for p in plans)


@pytest.mark.parametrize("spec_file", sorted((DATA / "nested").glob("*.yaml")), ids=str)
def test_l1_plan_matches_golden(spec_file: Path, regenerate_golden: bool) -> None:
    spec = load_spec(spec_file)
    text = json.dumps([p.describe() for p in l1_plans(spec, plan(spec))], indent=2) + "\n"
    golden = GOLDEN / f"{spec_file.stem}.plan.json"
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --regenerate-golden"
    assert text == golden.read_text()


def test_packages_and_modules_follow_the_cases() -> None:
    spec = load_spec(DATA / "nested" / "lab.yaml")
    first = l1_plans(spec, plan(spec))[0]
    assert {"targetcli-fb", "ceph-common", "ceph-osd", "iperf3", "strace"} <= set(first.packages)
    assert list(first.packages) == sorted(first.packages)  # a stable cache key
    assert first.modules.index("target_core_mod") < first.modules.index("vhost_scsi")
    assert {"vhost_net", "rbd", "tun", "bridge"} <= set(first.modules)
    plain = l1_plans(spec_of(ONE), plan(spec_of(ONE)))[0]
    assert plain.packages == ("fio", "iproute2", "kmod", "python3", "qemu-system-x86", "qemu-utils")
    assert plain.modules == ("tun", "vhost_net")


def test_same_kernel_other_memory_gets_numbered_labels() -> None:
    text = ONE.replace("{kind: nested}", "{kind: nested, memory_mib: [2048, 4096]}")
    spec = spec_of(text)
    plans = l1_plans(spec, plan(spec))
    assert [p.label for p in plans] == ["amd64-1", "amd64-2"]
    assert [c.id for c in plan(spec)] == ["memory-mib-2048", "memory-mib-4096"]


def test_what_l1_cannot_carry_is_named() -> None:
    text = """\
name: bad
hypervisor: {kind: nested}
guest:
  disks:
    - {name: a, model: vhost-user-blk, target: spdk, spdk: {rpc_socket: /run/spdk.sock},
       backend: {type: malloc}}
    - {name: b, backend: {type: file, path: /srv/disk.raw}}
jobs: [{name: j, rw: randread, disk: a}]
"""
    spec = spec_of(text)
    with pytest.raises(SpecError) as info:
        l1_plans(spec, plan(spec))
    problems = "\n".join(info.value.problems)
    assert "disk a: spdk.rpc_socket/binary name host paths" in problems
    assert "/srv/disk.raw is a host path" in problems


def test_an_spdk_case_carries_the_host_build_and_its_debian_libraries() -> None:
    text = """\
name: spdk
hypervisor: {kind: nested}
guest:
  disks:
    - - {name: a, model: vhost-user-blk, target: spdk, backend: {type: malloc}}
    - - {name: a, model: virtio-blk}
jobs: [{name: j, rw: randread, disk: a}]
"""
    spec = spec_of(text)
    (only,) = l1_plans(spec, plan(spec))
    assert only.spdk and only.describe()["spdk"] is True
    assert {"librte-vhost23", "librte-eal23", "liburing2"} <= set(only.packages)
    (plain,) = l1_plans(spec_of(ONE), plan(spec_of(ONE)))
    assert not plain.spdk and "librte-eal23" not in plain.packages


def test_a_libvirt_case_gets_libvirtd_in_l1_and_a_qemu_one_does_not() -> None:
    spec = spec_of(ONE.replace("name: one\n", "name: one\nlauncher: [qemu, libvirt]\n"))
    (only,) = l1_plans(spec, plan(spec))
    assert only.libvirt and only.describe()["libvirt"] is True
    assert {"libvirt-daemon", "libvirt-daemon-driver-qemu", "iptables"} <= set(only.packages)
    assert "libvirt-daemon-system" not in only.packages  # no default network, no systemd units
    (plain,) = l1_plans(spec_of(ONE), plan(spec_of(ONE)))
    assert not plain.libvirt and "libvirt" not in plain.describe()
    assert "libvirt-daemon" not in plain.packages
    script = libvirt_script()
    assert 'security_driver = "none"' in script and "dynamic_ownership = 0" in script
    assert "python3 -m vmlab.reaper libvirtd" in script  # L1's PID 1 reaps nothing
    assert script.index("reaper virtlogd") < script.index("reaper libvirtd")


def test_bad_hypervisor_values_name_the_field() -> None:
    for bad, words in (
        ("{kind: nested, kernel: bash}", "hypervisor.nested.kernel: 'bash' is not"),
        ("{kind: nested, memory_mib: 100}", "hypervisor.nested.memory_mib"),
        ("{kind: nested, packages: ['Bad Name']}", "hypervisor.nested.packages"),
        ("{kind: cloud}", "hypervisor.nested.kind"),
        ("guest", "hypervisor.host: Input should be 'host' (got 'guest')"),
        ("[host, {kind: nested}]", "not a mix"),
        ("{kind: nested, kernel: linux-image-amd64/sid}", "from bookworm-backports, not sid"),
    ):
        with pytest.raises(SpecError) as info:
            spec_of(ONE.replace("{kind: nested}", bad))
        assert words in "\n".join(info.value.problems), bad


def test_a_backports_kernel_is_an_l1_of_its_own_labelled_bpo() -> None:
    text = ONE.replace(
        "{kind: nested}",
        "{kind: nested, kernel: [linux-image-amd64, linux-image-amd64/bookworm-backports]}",
    )
    spec = spec_of(text)
    plans = l1_plans(spec, plan(spec))
    assert [p.label for p in plans] == ["amd64", "amd64-bpo"]
    assert plans[1].hypervisor.kernel == "linux-image-amd64/bookworm-backports"
    assert [c.id for c in plan(spec)] == [
        "linux-image-amd64",
        "linux-image-amd64-bookworm-backports",
    ]


def test_another_suite_is_read_from_private_lists_never_the_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmlab.guest.image import debs

    ran: list[list[str]] = []
    monkeypatch.setattr(debs.proc, "run", lambda argv, **kw: ran.append(list(argv)))
    options = debs.suite_apt_options("bookworm-backports", tmp_path)
    root = tmp_path / "apt" / "bookworm-backports"
    assert (root / "sources.list").read_text() == (
        "deb http://deb.debian.org/debian bookworm-backports main\n"
    )
    assert f"Dir::State::Lists={root / 'lists'}" in options
    assert f"Dir::Etc::SourceParts={root / 'sources.list.d'}" in options  # not the host's
    assert ran == [["apt-get", *options, "update"]]
    debs.suite_apt_options("bookworm-backports", tmp_path)
    assert len(ran) == 1  # lists less than a day old are reused
    with pytest.raises(HostError, match="no Debian suite 'sid'"):
        debs.suite_apt_options("sid", tmp_path)
    # The spec accepts exactly the suites the image build can read (two modules, one list).
    from vmlab.spec.hypervisor import KERNEL_SUITES

    assert set(KERNEL_SUITES) == set(debs.EXTRA_SUITES)


def test_inner_spec_drops_the_hypervisor_and_keeps_the_runtime() -> None:
    spec = load_spec(DATA / "nested" / "lab.yaml").model_copy(update={"runtime_s": 3})
    raw = yaml.safe_load(inner_spec(spec))
    assert "hypervisor" not in raw
    assert raw["runtime_s"] == 3
    inner = parse_spec(raw)
    assert not inner.nested
    # Every host case maps to one inner case, and back.
    inner_ids = [c.id for c in plan(inner)]
    assert [inner_case_id(c) for c in plan(spec)[:2]] == inner_ids


def test_inner_spec_drops_the_hypervisor_of_include_entries_too() -> None:
    text = ONE + "include: [{name: nvme, hypervisor: {kind: nested}, guest: {cpus: 1}}]\n"
    raw = yaml.safe_load(inner_spec(spec_of(text)))
    assert raw["include"] == [{"name": "nvme", "guest": {"cpus": 1}}]
    assert [c.id for c in plan(parse_spec(raw))] == ["default", "nvme"]


def test_with_nested_makes_every_case_nested() -> None:
    spec = with_nested(default_lab())
    assert spec.nested
    assert [c.id for c in plan(spec)] == [c.id for c in plan(default_lab())]
    assert [p.case_ids for p in l1_plans(spec, plan(spec))] == [
        ("virtio-blk", "virtio-scsi", "nvme")
    ]


def _image() -> RootfsImage:
    return RootfsImage(
        root=Path("/cache/rootfs/k"),
        key="k",
        variant="minimal",
        base=Path("/cache/rootfs/k/base.qcow2"),
        base_format="qcow2",
        kernel=Path("/cache/rootfs/k/vmlinuz-6.1.0-57-amd64"),
        bzimage=Path("/cache/rootfs/k/vmlinuz-6.1.0-57-amd64"),
        initrd=Path("/cache/rootfs/k/initrd.img"),
        cmdline="console=ttyS0 root=LABEL=vmlab-root rw",
        ready_marker="VMLAB-READY",
        failed_marker="VMLAB-INIT-FAILED",
        host_key="ssh-ed25519 AAAA",
        user="root",
        kernel_version="6.1.0-57-amd64",
        min_memory_mib=256,
        kernel_package="linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb",
    )


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_l1_argv_matches_golden(accel: str, regenerate_golden: bool) -> None:
    argv = l1_argv(
        _image(),
        NestedHypervisor(memory_mib=2048),
        accel=accel,
        disks=L1Disks(Path("/w/l1-root.qcow2"), Path("/w/payload.raw"), Path("/w/scratch,1.raw")),
        guest_dir=Path("/run/g-1"),
        serial_log=Path("/w/l1-serial.log"),
        ssh_port=2222,
        key_line=KEY,
    )
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / f"l1-{accel}.argv"
    if regenerate_golden:
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --regenerate-golden"
    assert text == golden.read_text()
    assert "filename=/w/scratch,,1.raw" in text  # QEMU option values escaped


def test_l1_with_iommu_and_nvme_for_vfio_matches_golden(regenerate_golden: bool) -> None:
    spec = load_spec(DATA / "nested" / "vfio.yaml")
    (l1,) = l1_plans(spec, plan(spec))
    assert "vfio_pci" in l1.modules and "pciutils" in l1.packages
    argv = l1_argv(
        _image(),
        l1.hypervisor,
        accel="tcg",
        disks=L1Disks(
            Path("/w/l1-root.qcow2"), Path("/w/payload.raw"), Path("/w/s.raw"), (Path("/w/n0"),)
        ),
        guest_dir=Path("/run/g-1"),
        serial_log=Path("/w/l1-serial.log"),
        ssh_port=2222,
        key_line=KEY,
    )
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / "l1-vfio.argv"
    if regenerate_golden:
        golden.write_text(text)
    assert text == golden.read_text()
    assert "q35,accel=tcg,kernel-irqchip=split" in argv
    assert "nvme,drive=nvme0,serial=vmlab-l1-nvme0,addr=0x10" in argv
    assert "intel_iommu=on iommu=pt" in argv[argv.index("-append") + 1]


def test_hostdevs_in_l1_must_be_its_nvme() -> None:
    text = ONE.replace("{kind: nested}", "{kind: nested, iommu: true, nvme: 1}").replace(
        "guest: {disks: [{model: virtio-blk}]}", "guest: {hostdevs: ['0000:00:11.0']}"
    )
    spec = spec_of(text)
    with pytest.raises(SpecError) as info:
        l1_plans(spec, plan(spec))
    assert info.value.problems == [
        "case default: hostdev 0000:00:11.0: not one of L1's emulated NVMe controllers "
        "(0000:00:10.0)"
    ]
    with pytest.raises(SpecError) as bad:
        spec_of(ONE.replace("{kind: nested}", "{kind: nested, nvme: 1}"))
    assert "set iommu: true" in "\n".join(bad.value.problems)


def test_mount_script_and_bench_command() -> None:
    script = mount_script(("vhost_net", "vhost_scsi"), configfs=True)
    assert "mount -o ro /dev/${d##*/} /root/nested/payload" in script
    assert "modprobe vhost_scsi || echo" in script  # a missing module is only a warning
    assert "mount -t configfs none /sys/kernel/config" in script
    assert "modprobe" not in mount_script((), configfs=False)
    assert "spdk" not in script
    linked = mount_script((), configfs=False, spdk="/opt/vmlab-spdk/23.01.1")
    assert (
        "mkdir -p /opt/vmlab-spdk && ln -sfn /root/nested/payload/spdk /opt/vmlab-spdk/23.01.1"
        in linked
    )
    spdk = bench_command(timeout_scale=6, l2_key="abc", spdk="/opt/vmlab-spdk/23.01.1")
    assert "VMLAB_SPDK=/opt/vmlab-spdk/23.01.1 " in spdk
    command = bench_command(timeout_scale=6, l2_key="abc")
    assert "VMLAB_SPDK" not in command
    assert command.startswith("rm -f /root/nested/work/rc; ")
    assert "VMLAB_GUEST_IMAGE=/root/nested/payload/l2/abc" in command
    assert "--timeout-scale 6" in command
    assert command.rstrip().endswith("&")  # detached: a dropped SSH session does not kill it


def test_kernel_modules_reads_loaded_builtin_and_loadable(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules/6.1.0-test"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(
        "kernel/drivers/vhost/vhost_net.ko: kernel/drivers/vhost/vhost.ko\n"
        "kernel/drivers/block/rbd.ko.xz: kernel/net/ceph/libceph.ko.xz\n"
    )
    (moddir / "modules.builtin").write_text("kernel/drivers/net/tun.ko\n")
    (tmp_path / "sys/module/vfio_pci").mkdir(parents=True)
    found = kernel_modules(root=tmp_path, release="6.1.0-test")
    assert found == {
        "vhost_net": True,
        "vhost_scsi": False,
        "target_core_mod": False,
        "rbd": True,
        "vfio_pci": True,
        "tun": True,
    }


def test_host_facts_of_older_runs_still_validate() -> None:
    """host.json written before nested hosts existed has neither field."""
    facts = {
        "hostname": "h",
        "kernel": "6.1",
        "cpus": 2,
        "memory_mib": 1024,
        "qemu": None,
        "qemu_version": None,
        "qemu_img": None,
        "qemu_storage_daemon": None,
        "fio_version": None,
        "accel": "tcg",
        "accel_reason": "r",
        "kvm_device": False,
        "vhost_net": False,
        "iommu_groups": 0,
        "hugepages_2m_total": 0,
        "hugepages_2m_free": 0,
        "missing": [],
    }
    parsed = HostFacts.model_validate(facts)
    assert parsed.nested == [] and parsed.kernel_modules == {}


def test_l1_memory_fits_the_largest_case_unless_the_spec_says() -> None:
    text = """\
name: mem
hypervisor: {kind: nested}
guest:
  memory_mib: 2048
  disks:
    - - {name: a, model: vhost-user-blk, target: spdk, spdk: {mem_mib: 1024},
         backend: {type: malloc}}
    - - {name: a, model: virtio-blk}
jobs: [{name: j, rw: randread, disk: a}]
"""
    spec = spec_of(text)
    (planned,) = l1_plans(spec, plan(spec))
    assert planned.hypervisor.memory_mib == 2048 + 1024 + 1536
    assert planned.describe()["memory_mib"] == 4608
    small = spec_of(ONE)
    assert l1_plans(small, plan(small))[0].hypervisor.memory_mib == 3072  # the floor
    fixed = spec_of(text.replace("{kind: nested}", "{kind: nested, memory_mib: 8192}"))
    assert l1_plans(fixed, plan(fixed))[0].hypervisor.memory_mib == 8192
