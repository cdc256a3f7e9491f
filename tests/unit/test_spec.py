from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vmlab.errors import SpecError
from vmlab.plan import plan
from vmlab.spec import default_lab, expand_matrix, load_spec, parse_size, parse_spec

SPECS = Path(__file__).parent.parent / "data" / "specs"


def spec(text: str):  # type: ignore[no-untyped-def]
    return parse_spec(yaml.safe_load(text), source=text)


def test_default_lab_is_three_device_models_with_reference_jobs() -> None:
    lab = default_lab()
    cases = plan(lab)
    assert [c.id for c in cases] == ["virtio-blk", "virtio-scsi", "nvme"]
    assert [j.name for j in lab.jobs] == ["latency", "throughput"]
    latency, throughput = lab.jobs
    assert (latency.rw, latency.rwmixread, latency.bs, latency.iodepth) == ("randrw", 90, "4k", 1)
    assert throughput.iodepth == 64 and throughput.direct
    # the lab's short runtime replaces the reference 120 s in every planned job
    assert {j.runtime_s for c in cases for j in c.jobs} == {10}


def test_every_list_is_an_axis_and_ids_are_readable() -> None:
    s = spec("""
name: m
guest:
  cpus: [1, 2]
  disks:
    - model: [virtio-blk, virtio-scsi]
      iothread: [true, false]
""")
    ids = [c.id for c in plan(s)]
    assert ids == [
        "cpus-1_virtio-blk_iothread",
        "cpus-1_virtio-blk_no-iothread",
        "cpus-1_virtio-scsi_iothread",
        "cpus-1_virtio-scsi_no-iothread",
        "cpus-2_virtio-blk_iothread",
        "cpus-2_virtio-blk_no-iothread",
        "cpus-2_virtio-scsi_iothread",
        "cpus-2_virtio-scsi_no-iothread",
    ]
    assert plan(s)[2].variant.guest.disks[0].model == "virtio-scsi"
    assert plan(s)[2].variant.guest.cpus == 1


def test_case_ids_are_stable_across_loads() -> None:
    a = [c.id for c in plan(load_spec(SPECS / "devices.yaml"))]
    b = [c.id for c in plan(load_spec(SPECS / "devices.yaml"))]
    assert a == b and len(set(a)) == len(a) == 6


def test_a_list_valued_field_is_not_an_axis_but_a_list_of_lists_is() -> None:
    raw = {"guest": {"disks": [[{"name": "a"}], [{"name": "a"}, {"name": "b"}]]}}
    variants = expand_matrix(raw)
    assert len(variants) == 2
    assert [len(v["guest"]["disks"]) for _, v in variants] == [1, 2]


def test_errors_name_every_bad_field_with_its_path() -> None:
    with pytest.raises(SpecError) as err:
        spec("""
name: bad
guest:
  memry: 512
  disks:
    - model: [virtio-blkk, nvme]
      cache: writeback
      aio: native
jobs:
  - {name: x, rw: sideways}
""")
    text = str(err.value)
    assert "guest.memry: unknown key" in text
    assert "guest.disks.0.model" in text and "'virtio-blkk'" in text
    assert "aio=native needs O_DIRECT" in text
    assert "jobs.0.rw" in text
    assert err.value.hint


def test_unknown_top_level_key_and_missing_disk_are_reported() -> None:
    with pytest.raises(SpecError, match="runtime: unknown key"):
        spec("name: a\nruntime: 3\n")
    with pytest.raises(SpecError, match="no disk named 'nope'"):
        spec("name: a\njobs: [{name: j, rw: read, disk: nope}]\n")


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("name: a\nguest: [\n")
    with pytest.raises(SpecError, match=r"s.yaml: not valid YAML at line 3"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_models_are_frozen() -> None:
    lab = default_lab()
    with pytest.raises(ValueError, match="frozen"):
        lab.jobs[0].iodepth = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4k", 4096),
        ("1G", 1 << 30),
        ("512M", 512 << 20),
        ("1.5k", 1536),
        (123, 123),
        ("2GiB", 2 << 30),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_is_rejected_with_the_field() -> None:
    with pytest.raises(SpecError, match="size"):
        spec("name: a\nguest:\n  disks:\n    - backend: {type: file, size: lots}\n")


def test_an_optional_list_field_is_a_value_not_an_axis() -> None:
    s = spec("name: p\nguest:\n  cpus: 2\n  vcpu_pinning: [0, 1]\n")
    (case,) = plan(s)
    assert case.variant.guest.vcpu_pinning == [0, 1]


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parent.parent.parent / "examples").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_examples_validate(path: Path) -> None:
    assert plan(load_spec(path))


def test_only_virtio_net_has_several_queues() -> None:
    from vmlab.spec import Nic

    assert Nic(model="virtio-net-pci", queues=4).queues == 4
    with pytest.raises(ValueError, match="multi-queue needs virtio-net-pci"):
        Nic(model="e1000e", queues=2)


def _disk_spec(disk: str) -> str:
    return f"name: s\nguest:\n  disks: [{disk}]\njobs: [{{name: j, rw: randread}}]\n"


def test_malloc_is_an_spdk_backend_and_spdk_finds_its_own_binary() -> None:
    ok = spec(_disk_spec("{model: vhost-user-blk, target: spdk, backend: {type: malloc}}"))
    (disk,) = ok.variants[0].guest.disks
    assert disk.backend.size_bytes == 256 << 20  # type: ignore[union-attr]
    assert disk.spdk is None and disk.spdk_target.binary is None  # vmlab finds SPDK
    assert disk.spdk_target.rpc_socket is None and disk.spdk_target.mem_mib == 1024
    assert [c.id for c in plan(ok)] == ["default"]
    with pytest.raises(SpecError) as err:
        spec(_disk_spec("{model: vhost-user-blk, backend: {type: malloc}}"))
    assert "backend malloc is a RAM disk inside an SPDK target" in str(err.value)
    assert "not qsd" in str(err.value)


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (
            "{model: vhost-user-blk, target: spdk, spdk: {binary: /x, rpc_socket: /s}}",
            "not both",
        ),
        ("{model: vhost-user-blk, target: spdk, spdk: {cpumask: '0x0'}}", "not a usable cpumask"),
        ("{model: vhost-user-blk, target: spdk, spdk: {mem_mib: 256}}", "greater than or equal"),
        ("{model: vhost-user-blk, spdk: {binary: /x}}", "but this disk's target is qsd"),
        ("{model: vhost-user-blk, target: spdk, backend: {type: malloc, size: 1500k}}", "MiB"),
    ],
)
def test_spdk_fields_that_cannot_work(disk: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(_disk_spec(disk))


INCLUDED = """
name: m
guest:
  memory_mib: 1024
  nics: [{attach: tap}]
  disks:
    - - {name: data, model: virtio-blk}
    - - {name: data, model: nvme}
include:
  # the first disk again, over a NIC with vhost-net: a case the product does not give
  - name: virtio-blk-vhost-net
    guest:
      nics: [{attach: tap, vhost: true}]
      disks: [{name: data, model: virtio-blk}]
"""


def test_an_included_case_says_only_what_differs_and_keeps_the_rest() -> None:
    cases = plan(spec(INCLUDED))
    assert [c.id for c in cases] == ["virtio-blk", "nvme", "virtio-blk-vhost-net"]
    extra = cases[2]
    assert extra.params == {"include": "virtio-blk-vhost-net"}
    assert extra.variant.guest.memory_mib == 1024  # merged over the spec's guest
    assert [n.vhost for n in extra.variant.guest.nics] == [True]
    assert [d.model for d in extra.variant.guest.disks] == ["virtio-blk"]
    assert all(not n.vhost for c in cases[:2] for n in c.variant.guest.nics)


def test_axes_an_include_entry_leaves_in_place_still_expand() -> None:
    s = spec("""
name: m
guest:
  cpus: [1, 2]
  disks: [{model: [virtio-blk, nvme]}]
include:
  - name: scsi
    guest: {disks: [{model: virtio-scsi}]}
""")
    assert [c.id for c in plan(s)][-2:] == ["scsi_cpus-1", "scsi_cpus-2"]
    assert [c.variant.guest.cpus for c in plan(s)][-2:] == [1, 2]


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        ("oops", "include: expected a list of cases"),
        ("[{guest: {cpus: 1}}]", "include.0.name: a case name is 1-40 of"),
        ("[{name: Bad_Name, guest: {cpus: 1}}]", "(got 'Bad_Name')"),
        ("[{name: a, guest: {cpus: 1}}, {name: a, guest: {cpus: 2}}]", "include.1.name: 'a' "),
        ("[{name: a, jobs: []}]", "include.0.jobs: unknown key"),
        ("[{name: a}]", "include.0: says nothing that differs"),
        (
            "[{name: nvme, guest: {disks: [{model: nvme, cache: writeback}]}}]",
            "include.0.name: 'nvme' is already the id",
        ),
        ("[{name: a, guest: {cpus: 0}}]", "include.0.guest.cpus: Input should be greater"),
    ],
)
def test_a_bad_include_entry_is_named_with_its_path(include: str, expected: str) -> None:
    text = f"name: m\nguest: {{disks: [{{model: [virtio-blk, nvme]}}]}}\ninclude: {include}\n"
    with pytest.raises(SpecError) as err:
        spec(text)
    assert expected in str(err.value)


def test_a_problem_the_matrix_shares_with_an_include_is_said_once_without_its_path() -> None:
    with pytest.raises(SpecError) as err:
        spec("name: m\nguest: {memory_mib: 1}\ninclude: [{name: a, guest: {cpus: 1}}]\n")
    lines = [p for p in err.value.problems if "memory_mib" in p]
    assert lines == [lines[0]] and lines[0].startswith("guest.memory_mib")


def test_include_counts_toward_the_matrix_size_limit() -> None:
    raw = yaml.safe_load(
        "name: m\nguest: {cpus: [1, 2]}\n"
        "include: [{name: a, guest: {memory_mib: [512, 1024, 2048]}}]\n"
    )
    with pytest.raises(SpecError, match=r"8 cases \(guest.cpus x2, include: 6\)"):
        parse_spec(raw, max_cases=7)
    assert len(plan(parse_spec(raw, max_cases=8))) == 8  # the entry keeps the cpus axis


def test_a_libvirt_network_nic_needs_launcher_libvirt_and_forward_needs_it() -> None:
    s = spec("""
name: m
launcher: libvirt
guest:
  nics:
    - - {attach: network}
    - - {attach: network, forward: route}
""")
    assert [c.id for c in plan(s)] == ["network", "network-route"]
    assert [c.variant.guest.nics[0].forward_mode for c in plan(s)] == ["nat", "route"]
    with pytest.raises(SpecError, match="attach network joins a libvirt network: launcher"):
        spec("name: m\nguest: {nics: [{attach: network}]}\n")
    with pytest.raises(SpecError, match=r"forward is how a libvirt network .* not tap"):
        spec("name: m\nguest: {nics: [{attach: tap, forward: nat}]}\n")
