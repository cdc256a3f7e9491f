"""Golden libvirt domain XML for every rendered case; `pytest --regenerate-golden` rewrites them.

The same spec set as the QEMU goldens (the default lab + tests/data/specs/*.yaml), rendered with
fixed paths, port and owner. Every golden file also passes `virt-xml-validate` (libvirt's RelaxNG
schemas), when it is installed.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
import yaml
from golden_cases import fixed_sources, golden_cases

from vmlab.errors import SpecError
from vmlab.guest.boot import preview_boot
from vmlab.launch.libvirt import is_local_uri
from vmlab.launch.libvirt_owner import parse_owner
from vmlab.net.lab import LabNic, LibvirtNetwork
from vmlab.plan import Case, plan
from vmlab.render.libvirt import (
    OWNER_NS,
    QEMU_NS,
    DomainRuntime,
    Owner,
    cpu_mode,
    domain_name,
    libvirt_disks,
    preview_runtime,
    rbd_secret_usage,
    render_libvirt,
    render_network,
    render_secret,
    xml_environment,
)
from vmlab.render.model import BootImage, DiskSource, GuestRuntime, mac_address
from vmlab.render.qemu import render_qemu
from vmlab.spec import Disk, Guest, default_lab, parse_spec

DATA = Path(__file__).parent.parent / "data"
GOLDEN = DATA / "golden" / "libvirt"
QNS = {"qemu": QEMU_NS}
OWNER = Owner(
    host="lab-host",
    boot_id="00000000-0000-0000-0000-000000000000",
    pid=4242,
    start_ticks=123456,
    run_id="20250101-000000-golden",
    case_id="CASE",
)


# Cases the libvirt renderer refuses, and why (everything else has a golden file).
REFUSED = {
    "targets/default": "memory_path",
}


def _renderable() -> list[tuple[str, Case]]:
    return [(n, c) for n, c in golden_cases() if f"{n}/{c.id}" not in REFUSED]


BOOT = BootImage(Path("/img/vmlinux"), Path("/img/initrd.img"), "console=ttyS0 vmlab.x=1")


def fixed_boot(case: Case) -> BootImage:
    """`vmlab render`'s boot preview with absolute paths (the schema wants them)."""
    boot = preview_boot(case.variant.guest, BOOT)
    if case.variant.guest.image == "default":
        return boot
    return replace(
        boot,
        kernel=Path("/rootfs/vmlinux") if boot.kernel else None,
        initrd=Path("/rootfs/initrd.img") if boot.initrd else None,
        root_disk=Path(f"/scratch/boot/{case.id}-root.qcow2"),
        seed=Path("/r/seed.iso") if boot.seed else None,
    )


def fixed_nics(case: Case) -> list[LabNic]:
    """Lab NICs as LabNetwork.add_host_port makes them, with fixed names (QEMU goldens' ids)."""
    return [
        LabNic(
            guest=case.id,
            kind=spec.attach,
            netdev_id=f"lab-{spec.name}",
            ifname="lb-golden" if spec.attach == "tap" else "lm-golden",
            netns="vmlab-golden",
            mac=mac_address(spec.name),
            fds=(),
            address=IPv4Interface(f"10.9.0.{10 + index}/24"),
            gateway=IPv4Interface("10.9.0.1/24"),
            vhost=spec.vhost,
            host_queues=spec.queues,
        )
        for index, spec in enumerate(case.variant.guest.nics)
    ]


def fixed_xml(case: Case, accel: str = "tcg", dac_label: str | None = "+0:+0") -> str:
    runtime = DomainRuntime(
        name=domain_name(OWNER.run_id, case.id),
        serial_log=Path("/r/serial.log"),
        ssh_port=40022,
        owner=Owner(**{**OWNER.__dict__, "case_id": case.id}),
        dac_label=dac_label,
    )
    return render_libvirt(
        case,
        accel=accel,
        boot=fixed_boot(case),
        disks=fixed_sources(case),
        runtime=runtime,
        nics=fixed_nics(case),
    ).xml


def _qemu_args(root: ET.Element) -> list[str]:
    return [a.attrib["value"] for a in root.iterfind("qemu:commandline/qemu:arg", QNS)]


def _golden_files() -> list[Path]:
    return sorted(GOLDEN.glob("*/*.xml"))


@pytest.mark.parametrize(("spec_name", "case"), _renderable(), ids=lambda v: getattr(v, "id", v))
def test_xml_matches_golden(spec_name: str, case: Case, regenerate_golden: bool) -> None:
    golden = GOLDEN / spec_name / f"{case.id}.xml"
    text = fixed_xml(case)
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --regenerate-golden"
    assert text == golden.read_text()


def test_secret_matches_golden(regenerate_golden: bool) -> None:
    golden = GOLDEN / "secret" / "ceph.xml"
    text = render_secret(usage_name="vmlab-run-case-data", description="vmlab-owner {}")
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    root = ET.fromstring(text)
    assert root.attrib == {"ephemeral": "yes", "private": "yes"}
    assert root.findtext("usage/name") == "vmlab-run-case-data"


def test_refused_cases_say_why_and_what_to_do() -> None:
    refused = [(n, c) for n, c in golden_cases() if f"{n}/{c.id}" in REFUSED]
    assert len(refused) == len(REFUSED)
    for name, case in refused:
        with pytest.raises(SpecError, match=REFUSED[f"{name}/{case.id}"]) as info:
            fixed_xml(case)
        assert "launcher qemu" in (info.value.hint or "")


def test_every_golden_file_belongs_to_a_case() -> None:
    expected = {f"{name}/{case.id}.xml" for name, case in _renderable()} | {
        "secret/ceph.xml",
        "libvirt-network/nat.xml",
        "libvirt-network/route.xml",
    }
    present = {str(p.relative_to(GOLDEN)) for p in _golden_files()}
    assert present == expected


def _need_validator() -> None:
    missing = [b for b in ("virt-xml-validate", "xmllint") if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: apt-get install libvirt-clients libxml2-utils"
        )


def test_every_golden_file_passes_virt_xml_validate() -> None:
    _need_validator()
    files = _golden_files()
    assert files
    for path in files:
        schema = {"secret": "secret", "libvirt-network": "network"}.get(path.parent.name, "domain")
        done = subprocess.run(
            ["virt-xml-validate", str(path), schema],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"


def test_golden_xml_says_what_the_qemu_argv_says() -> None:
    """Device model, cache, aio, queues, iothread, throttle, serial: one table, both renderers."""
    by_id = {c.id: c for n, c in golden_cases() if n == "devices"}
    root = ET.fromstring(fixed_xml(by_id["virtio-blk_writeback"]))
    assert root.attrib["type"] == "qemu"
    assert root.findtext("memory") == "1024" and root.find("memory").attrib["unit"] == "MiB"
    assert root.findtext("vcpu") == "4"
    assert root.find("os/type").attrib["machine"] == "q35"
    assert root.findtext("os/kernel") == "/img/vmlinux"
    assert root.findtext("os/cmdline") == "console=ttyS0 vmlab.x=1"
    assert root.find("features/acpi") is not None
    assert root.find("cpu").attrib["mode"] == "maximum"
    disks = {d.findtext("serial"): d for d in root.iterfind("devices/disk")}
    data = disks["vmlab-data"].find("driver")
    assert data is not None
    assert data.attrib == {"name": "qemu", "type": "raw", "cache": "writeback", "io": "threads"}
    aux = disks["vmlab-aux"]
    assert aux.find("driver").attrib == {
        "name": "qemu",
        "type": "qcow2",
        "cache": "directsync",
        "io": "native",
        "discard": "unmap",
        "iothread": "1",
        "queues": "2",
        "queue_size": "128",
    }
    assert aux.findtext("iotune/total_iops_sec") == "500"
    assert aux.findtext("iotune/total_bytes_sec") == "10485760"
    assert root.findtext("iothreads") == "1"
    assert root.find("seclabel/label").text == "+0:+0"
    serial = root.find("devices/serial")
    assert serial is not None and serial.attrib["type"] == "file"
    assert serial.find("source").attrib["path"] == "/r/serial.log"
    args = _qemu_args(root)
    assert args[:2] == ["-netdev", "user,id=mgmt,hostfwd=tcp:127.0.0.1:40022-:22"]


QEMU_GOLDEN = DATA / "golden" / "qemu"
PCI_DEVICES = (
    "virtio-net-pci",
    "e1000e",
    "virtio-rng-pci",
    "virtio-blk-pci",
    "virtio-scsi-pci",
    "nvme",
    "vhost-user-blk-pci",
    "vhost-scsi-pci",
)


def qemu_pci_slots(argv: list[str]) -> dict[str, int]:
    """device id -> PCI slot on pcie.0 as QEMU assigns them: addr= if given, else the lowest
    free slot at creation time (00.0 is the host bridge)."""
    used, slots = {0}, {}
    for prev, token in itertools.pairwise(argv):
        if prev != "-device" or token.split(",", 1)[0] not in PCI_DEVICES:
            continue
        opts = dict(o.split("=", 1) for o in token.split(",")[1:] if "=" in o)
        slot = int(opts["addr"], 16) if "addr" in opts else min(set(range(32)) - used)
        used.add(slot)
        slots[opts["id"]] = slot
    return slots


def libvirt_pci_slots(root: ET.Element) -> dict[str, int]:
    """device id -> slot in the domain XML (user aliases lose their ua- prefix in QEMU)."""
    slots = {}
    for elem in root.iter():
        addr, alias = elem.find("address"), elem.find("alias")
        if addr is not None and addr.attrib.get("type") == "pci" and alias is not None:
            name = alias.attrib["name"].removeprefix("ua-")
            slots[name] = int(addr.attrib["slot"], 16)
    for token in _qemu_args(root):
        if token.split(",", 1)[0] in PCI_DEVICES:
            opts = dict(o.split("=", 1) for o in token.split(",")[1:] if "=" in o)
            slots[opts["id"]] = int(opts["addr"], 16)
    return slots


@pytest.mark.parametrize(("spec_name", "case"), _renderable(), ids=lambda v: getattr(v, "id", v))
def test_pci_slots_are_the_qemu_launchers(spec_name: str, case: Case) -> None:
    """Same topology as the QEMU golden argv: NIC, rng, then each disk's device, slot by slot."""
    argv = (QEMU_GOLDEN / spec_name / f"{case.id}.argv").read_text().splitlines()
    expected = qemu_pci_slots(argv)
    assert {"nic-mgmt", "rng0"} <= set(expected)
    assert libvirt_pci_slots(ET.fromstring(fixed_xml(case))) == expected


def _device_opts(token: str, drop: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    driver, *rest = token.split(",")
    opts = dict(o.split("=", 1) for o in rest)
    return driver, {k: v for k, v in opts.items() if k not in drop}


def qemu_argv(case: Case, boot: BootImage, disks: dict[str, DiskSource]) -> list[str]:
    """The QEMU launcher's argv for the same case."""
    runtime = GuestRuntime(Path("/q"), Path("/s"), Path("/p"), 40022)
    return render_qemu(
        case, qemu="qemu-system-x86_64", accel="tcg", boot=boot, disks=disks, runtime=runtime
    ).argv


def test_nvme_goes_through_qemu_commandline_with_the_qemu_launchers_blockdevs() -> None:
    by_id = {c.id: c for n, c in golden_cases() if n == "devices"}
    root = ET.fromstring(fixed_xml(by_id["nvme_writeback"]))
    assert [d.findtext("serial") for d in root.iterfind("devices/disk")] == ["vmlab-aux"]
    args = _qemu_args(root)
    argv = (QEMU_GOLDEN / "devices" / "nvme_writeback.argv").read_text().splitlines()
    chain = [a for a in argv if "node-name=file-data" in a or "node-name=fmt-data" in a]
    assert len(chain) == 2
    for token in chain:
        assert token in args  # byte for byte the QEMU launcher's -blockdev
    (device,) = [a for a in args if a.startswith("nvme,")]
    (direct,) = [a for a in argv if a.startswith("nvme,")]
    placement = ("bus", "addr")  # compared by test_pci_slots_are_the_qemu_launchers
    assert _device_opts(device, drop=placement) == _device_opts(direct, drop=placement)


def test_virtio_scsi_controller_carries_queues_iothread_and_queue_size() -> None:
    spec = parse_spec(
        yaml.safe_load(
            """
name: scsi
guest:
  disks:
    - {name: data, model: virtio-scsi, iothread: true, num_queues: 4, queue_size: 256}
jobs: [{name: j, rw: read}]
"""
        )
    )
    (case,) = plan(spec)
    root = ET.fromstring(fixed_xml(case))
    ctrl = root.find("devices/controller[@type='scsi']")
    assert ctrl is not None and ctrl.attrib["model"] == "virtio-scsi"
    assert ctrl.find("driver").attrib == {"queues": "4", "iothread": "1"}
    prop = root.find("qemu:override/qemu:device[@alias='ua-scsi-data']/qemu:frontend/*", QNS)
    assert prop is not None
    assert prop.attrib == {"name": "virtqueue_size", "type": "unsigned", "value": "256"}
    disk = root.find("devices/disk")
    assert disk is not None and "iothread" not in disk.find("driver").attrib
    assert disk.find("address").attrib["controller"] == "0"


def test_escaping_in_xml_and_in_the_qemu_argv(tmp_path: Path) -> None:
    nasty = "/tmp/a'b\"c<d>&e,f.raw"
    spec = parse_spec(
        {
            "name": "nasty",
            "guest": {
                "kernel_args": "x=<y> & 'z'",
                "disks": [
                    {
                        "name": "data",
                        "model": "virtio-blk",
                        "backend": {"type": "file", "path": nasty},
                    },
                    {"name": "fast", "model": "nvme", "backend": {"type": "file", "path": nasty}},
                ],
            },
            "jobs": [{"name": "j", "rw": "read"}],
        }
    )
    (case,) = plan(spec)
    boot = BootImage(
        Path("/img/k"), Path("/img/i"), f"console=ttyS0 {case.variant.guest.kernel_args}"
    )
    runtime = DomainRuntime(
        name="vmlab-<&>", serial_log=Path("/r/s'\".log"), ssh_port=1, owner=OWNER
    )
    paths = {"data": DiskSource(path=Path(nasty)), "fast": DiskSource(path=Path(nasty))}
    xml = render_libvirt(case, accel="tcg", boot=boot, disks=paths, runtime=runtime).xml
    assert "<d>" not in xml and "&e" not in xml  # nothing raw: it parses back exactly
    root = ET.fromstring(xml)
    assert root.findtext("name") == "vmlab-<&>"
    assert root.findtext("os/cmdline") == "console=ttyS0 x=<y> & 'z'"
    assert root.find("devices/disk/source").attrib["file"] == nasty
    assert root.find("devices/serial/source").attrib["path"] == "/r/s'\".log"
    # inside a QEMU option string (NVMe through <qemu:commandline>): XML-escaped AND ',' -> ',,'
    (blockdev,) = [a for a in _qemu_args(root) if "node-name=file-fast" in a]
    assert "filename=/tmp/a'b\"c<d>&e,,f.raw,aio=" in blockdev
    # the QEMU launcher's argv: commas doubled, nothing else touched (no shell involved)
    argv = qemu_argv(case, boot, paths)
    assert any("filename=/tmp/a'b\"c<d>&e,,f.raw,aio=" in a for a in argv)
    assert argv[argv.index("-append") + 1] == "console=ttyS0 x=<y> & 'z'"
    # and the escaped document is still one libvirt accepts
    if shutil.which("virt-xml-validate") and shutil.which("xmllint"):
        (tmp_path / "nasty.xml").write_text(xml)
        done = subprocess.run(
            ["virt-xml-validate", str(tmp_path / "nasty.xml"), "domain"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_the_environment_escapes_every_template_and_undefined_is_an_error() -> None:
    env = xml_environment()
    assert env.from_string("{{ v }}").render(v="<a&'\">") == "&lt;a&amp;&#39;&#34;&gt;"
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing }}").render()


def test_kvm_is_host_passthrough_tcg_is_maximum_and_a_model_is_custom() -> None:
    case = plan(default_lab())[0]
    kvm = ET.fromstring(fixed_xml(case, "kvm"))
    assert kvm.attrib["type"] == "kvm" and kvm.find("cpu").attrib["mode"] == "host-passthrough"
    assert cpu_mode("tcg", None) == ("maximum", None)
    assert cpu_mode("kvm", "EPYC") == ("custom", "EPYC")
    assert cpu_mode("tcg", "host") == ("host-passthrough", None)


def test_without_a_dac_label_libvirt_keeps_its_own_user() -> None:
    root = ET.fromstring(fixed_xml(plan(default_lab())[0], dac_label=None))
    assert root.find("seclabel") is None


def test_owner_metadata_round_trips() -> None:
    root = ET.fromstring(fixed_xml(plan(default_lab())[0]))
    (elem,) = root.find("metadata") or []
    assert elem.tag == f"{{{OWNER_NS}}}owner"
    owner = parse_owner(ET.tostring(elem, encoding="unicode"))
    assert owner == Owner(**{**OWNER.__dict__, "case_id": "virtio-blk"})
    assert parse_owner("<owner host='x'/>") is None


def test_domain_names_are_prefixed_and_bounded() -> None:
    assert domain_name("run", "virtio-blk") == "vmlab-run-virtio-blk"
    long_a = domain_name("r" * 90, "case-a" * 5)
    long_b = domain_name("r" * 90, "case-b" * 5)
    assert long_a.startswith("vmlab-") and len(long_a) == 100 and long_a != long_b


def test_too_many_disks_for_the_root_bus_is_a_spec_error() -> None:
    guest = Guest(disks=[Disk(name=f"d{i}") for i in range(16)])
    with pytest.raises(SpecError, match="too many disks"):
        libvirt_disks(
            guest, {d.name: DiskSource(path=Path("/x")) for d in guest.disks}, domain="vmlab-x"
        )
    fifteen = Guest(disks=guest.disks[:15])
    assert (
        len(
            libvirt_disks(
                fifteen,
                {d.name: DiskSource(path=Path("/x")) for d in fifteen.disks},
                domain="vmlab-x",
            )
        )
        == 15
    )


def test_local_and_remote_uris() -> None:
    assert is_local_uri("qemu:///system")
    assert is_local_uri("qemu+ssh://root@localhost/system")
    assert not is_local_uri("qemu+ssh://root@hv1.example/system")


def test_preview_runtime_renders_a_valid_document_for_vmlab_render(tmp_path: Path) -> None:
    case = plan(default_lab())[2]
    runtime = preview_runtime(case.id, serial_log=Path(f"<run>/cases/{case.id}/serial.log"))
    xml = render_libvirt(
        case, accel="tcg", boot=BOOT, disks=fixed_sources(case), runtime=runtime
    ).xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == "vmlab-RUN-nvme"
    assert root.find("devices/serial/source").attrib["path"] == "<run>/cases/nvme/serial.log"
    assert parse_owner(ET.tostring(root.find("metadata")[0], encoding="unicode")).pid == 0


def test_rbd_through_librbd_is_a_network_disk_keyed_by_a_secret_never_by_the_key() -> None:
    (case,) = [c for n, c in golden_cases() if n == "rbd" and c.id == "virtio-blk"]
    root = ET.fromstring(fixed_xml(case))
    (disk,) = root.iterfind("devices/disk[@type='network']")
    source = disk.find("source")
    assert source.attrib == {"protocol": "rbd", "name": "bench/vol1"}
    assert source.find("config").attrib["file"] == "/etc/ceph/lab,1.conf"  # XML: no ,, here
    assert source.find("auth").attrib["username"] == "bench"
    secret = source.find("auth/secret").attrib
    assert secret["type"] == "ceph"
    assert secret["usage"] == rbd_secret_usage(root.findtext("name"), "data")
    assert secret["usage"].startswith("vmlab-")  # so a crashed run's secret can be swept
    assert "io" not in disk.find("driver").attrib  # QEMU's rbd driver has no aio mode
    assert "key" not in ET.tostring(root, encoding="unicode").lower()


def test_boot_disks_boot_and_reboot_as_on_the_qemu_launcher() -> None:
    """Slots are checked with every other device above; here: boot order, read-only seed,
    and reboots (a cloud-init guest may reboot; every other guest must not)."""
    images = [c for n, c in golden_cases() if n == "images"]
    assert len(images) == 3
    for case in images:
        root = ET.fromstring(fixed_xml(case))
        argv = (QEMU_GOLDEN / "images" / f"{case.id}.argv").read_text()
        by_serial = {d.findtext("serial"): d for d in root.iterfind("devices/disk")}
        assert by_serial["vmlab-root"].find("driver").attrib["type"] == "qcow2"
        firmware = root.find("os/kernel") is None
        assert (by_serial["vmlab-root"].find("boot") is not None) == firmware
        assert ("bootindex=0" in argv) == firmware
        if "vmlab-seed" in by_serial:
            assert by_serial["vmlab-seed"].find("readonly") is not None
            assert by_serial["vmlab-seed"].find("address").attrib["slot"] == "0x0f"
            assert root.findtext("on_reboot") == "restart"  # cloud-init may reboot
            assert "-no-reboot" not in argv
        else:
            assert root.findtext("on_reboot") == "destroy"
            assert "-no-reboot" in argv


NETWORK = LibvirtNetwork(
    name="vmlab-net-4242-123456-golden-0",
    bridge="vn0-golden",
    address=IPv4Interface("10.77.5.1/24"),
    forward="nat",
)


@pytest.mark.parametrize("forward", ["nat", "route"])
def test_network_matches_golden(forward: str, regenerate_golden: bool) -> None:
    golden = GOLDEN / "libvirt-network" / f"{forward}.xml"
    text = render_network(replace(NETWORK, forward=forward))  # type: ignore[arg-type]
    if regenerate_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    root = ET.fromstring(text)
    assert root.find("forward").attrib == {"mode": forward}  # type: ignore[union-attr]
    assert root.find("ip").attrib == {"address": "10.77.5.1", "netmask": "255.255.255.0"}  # type: ignore[union-attr]
    assert root.find("dns").attrib == {"enable": "no"}  # type: ignore[union-attr]  # no dnsmasq
    assert root.find("ip/dhcp") is None  # vmlab gives the guest its address


NETWORK_NIC_SPEC = """
name: nets
launcher: libvirt
guest:
  nics: [{attach: network, forward: route, vhost: true}]
"""


def test_a_network_nic_is_an_interface_on_its_own_libvirt_network() -> None:
    (case,) = plan(parse_spec(yaml.safe_load(NETWORK_NIC_SPEC)))
    nic = replace(fixed_nics(case)[0], kind="network", network=NETWORK)

    def xml(nics: list[LabNic] | None) -> str:
        runtime = preview_runtime(case.id, serial_log=Path("/r/serial.log"))
        boot, disks = fixed_boot(case), fixed_sources(case)
        return render_libvirt(
            case, accel="tcg", boot=boot, disks=disks, runtime=runtime, nics=nics
        ).xml

    (iface,) = ET.fromstring(xml([nic])).iterfind("devices/interface")
    assert iface.attrib == {"type": "network"}
    assert iface.find("source").attrib == {"network": NETWORK.name}  # type: ignore[union-attr]
    assert iface.find("driver").attrib == {"name": "vhost"}  # type: ignore[union-attr]
    (shown,) = ET.fromstring(xml(None)).iterfind("devices/interface/source")
    assert shown.attrib["network"].startswith("vmlab-net-PID-TICKS-")


def test_qemu_alone_refuses_a_network_nic_naming_the_launcher() -> None:
    from vmlab.render.qemu import nic_plans

    (case,) = plan(parse_spec(yaml.safe_load(NETWORK_NIC_SPEC)))
    with pytest.raises(SpecError, match="attach network is a libvirt network") as info:
        nic_plans(case.variant.guest, None)
    assert "launcher libvirt" in (info.value.hint or "")
