"""Bad input at the spec edge: control characters in any string, options that would aim the host
baseline elsewhere, names that smuggle options, numbers out of range, and spec files that are
not small UTF-8 YAML (FIFOs, encodings, binary, deep nesting, alias bombs, repeated keys)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlab.errors import SpecError
from vmlab.spec import CONFIRM_CASES, MAX_CASES, load_spec, parse_spec
from vmlab.spec.fiooptions import REFUSED_OPTIONS

BASE: dict[str, Any] = {
    "name": "t",
    "guest": {"disks": [{"name": "data", "backend": {"type": "file", "path": "/srv/a.raw"}}]},
    "jobs": [{"name": "j", "rw": "randread"}],
}


def problems(**changes: Any) -> list[str]:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        *parents, last = path.split("__")
        here = raw
        for part in parents:
            here = here[int(part)] if isinstance(here, list) else here.setdefault(part, {})
        here[last] = value
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)
    return refused.value.problems


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("guest__disks__0__backend__path", "/srv/a\n-device\nfoo.raw", "guest.disks.0.backend"),
        ("guest__kernel_args", "quiet\nconsole=ttyS1", "guest.kernel_args"),
        ("guest__machine", "q35\n", "guest.machine"),
        ("guest__memory_path", "/dev/shm\t", "guest.memory_path"),
        ("guest__hostdevs", ["0000:01:00.0\n"], "guest.hostdevs"),
        ("jobs__0__size", "1G\nfilename=/dev/sda", "jobs.0.size"),
        ("jobs__0__options", {"verify": "crc32c\nexec_prerun=id"}, "jobs.0.options"),
        ("jobs__0__options", {"verify\n": "crc32c"}, "jobs.0.options"),
        ("guest__image", {"kind": "cloud", "source": "/x.qcow2\r"}, "guest.image.cloud.source"),
        ("name", "t\x00", "name"),
        ("guest__cpu_model", "max\u2028", "guest.cpu_model"),
        ("guest__cpu_model", "max\u202e", "guest.cpu_model"),  # a bidi override
    ],
)
def test_control_characters_are_refused_naming_the_field(path: str, value: Any, where: str) -> None:
    found = problems(**{path: value})
    assert any(p.startswith(where) and "U+" in p for p in found), found


def test_binary_yaml_cannot_smuggle_a_newline_into_a_string() -> None:
    raw = yaml.safe_load("name: t\nguest: {kernel_args: !!binary YQpi}\n")  # b"a\nb"
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)
    assert refused.value.problems == [
        "guest.kernel_args: binary data (!!binary) where text belongs: spec strings may not "
        "hold control characters (newline, tab, ...); they would split or change the QEMU "
        "argv, XML or fio job file"
    ]


def test_a_cluster_conf_with_a_newline_is_refused() -> None:
    backend = {"type": "rbd", "cluster": {"conf": "/etc/ceph/ceph.conf\n-device\nx"}}
    found = problems(guest__disks__0__backend=backend)
    assert any(p.startswith("guest.disks.0.backend.rbd.cluster.conf: a newline") for p in found)


def test_a_description_may_span_lines() -> None:
    raw = {**BASE, "description": "first line\nsecond\tline"}
    assert parse_spec(raw).description == "first line\nsecond\tline"
    assert any(p.startswith("description") for p in problems(description="bell\x07"))


@pytest.mark.parametrize(
    "option", ["filename", "directory", "opendir", "exec_prerun", "exec_postrun", "ioengine"]
)
def test_options_that_name_a_target_or_run_a_program_are_refused(option: str) -> None:
    (found,) = problems(jobs__0__options={option: "/dev/vdb"})
    assert found.startswith(f"jobs.0.options: option {option} is not allowed")
    assert "disk:" in found


def test_every_refused_option_is_refused_and_says_why() -> None:
    for option, why in REFUSED_OPTIONS.items():
        (found,) = problems(jobs__0__options={option: "1"})
        assert why in found


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"a=b": "1"}, "is not a fio option name"),
        ({"[host]": "1"}, "is not a fio option name"),
        ({"Filename": "/dev/vdb"}, "is not a fio option name"),
        ({"exec-prerun": "id"}, "is not a fio option name"),
        ({"mem": "mmaphuge:/hugetlbfs/f"}, "a memory type backed by a file"),
        ({"verify": " "}, "an empty value"),
        ({"numjobs": 100000}, "option numjobs is the job's own numjobs: field"),
        ({"blocksize": "1M"}, "set bs: on the job instead"),
    ],
)
def test_option_keys_and_values_are_checked(options: dict[str, str], expected: str) -> None:
    (found,) = problems(jobs__0__options=options)
    assert expected in found


def test_an_external_ioengine_is_refused() -> None:
    (found,) = problems(jobs__0__ioengine="external:/tmp/evil.so")
    assert found.startswith("jobs.0.ioengine")


def test_harmless_options_still_pass() -> None:
    raw = {**BASE, "jobs": [{**BASE["jobs"][0], "options": {"verify": "crc32c", "time_based": 0}}]}
    assert parse_spec(raw).jobs[0].options == {"verify": "crc32c", "time_based": 0}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("guest__machine", "pc,memory-backend=evil,accel=kvm", "a machine type is a name"),
        ("guest__machine", "", "a machine type is a name"),
        ("guest__cpu_model", " ", "a CPU model is a name"),
        ("guest__cpu_model", "", "a CPU model is a name"),
        ("guest__cpu_model", "max,,x", "a CPU model is a name"),
        ("guest__disks__0__throttle", {"iops_total": 10**16}, "less than or equal to"),
        ("guest__disks__0__queue_size", 100, "power of two: 64 or 128, not 100"),
        ("guest__disks__0__iothread_cpu", 10**9, "less than or equal to"),
        ("guest__vcpu_pinning", [0, -1], "greater than or equal to 0"),
        ("runtime_s", 10**12, "less than or equal to"),
        ("jobs__0__size", "lots", "not a size"),
    ],
)
def test_names_are_names_and_numbers_are_bounded(path: str, value: Any, expected: str) -> None:
    found = problems(**{path: value})
    assert any(expected in p for p in found), found


def test_valid_names_and_numbers_pass() -> None:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["guest"].update(machine="pc-q35-7.2", cpu_model="Skylake-Server,-hle,+pcid,level=13")
    raw["guest"]["disks"][0].update(queue_size=256, throttle={"iops_total": 10**15})
    raw["jobs"][0]["size"] = "50%"
    spec = parse_spec(raw)
    assert spec.variants[0].guest.cpu_model == "Skylake-Server,-hle,+pcid,level=13"


# --- spec files --------------------------------------------------------------------------------


def refused_file(path: Path) -> str:
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    assert refused.value.file == path
    assert str(path) in refused.value.message
    return refused.value.message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in refused_file(fifo)
    assert "a directory" in refused_file(tmp_path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("name: café\n".encode("latin-1"), "not UTF-8: byte 0xe9 at line 1"),
        ("name: t\n".encode("utf-16"), "UTF-16"),
        (b"name: t\n\x00\x01\x02\xff\xfe", "NUL bytes"),
        (b"name: t\n\x1b[31m: x\n", "not valid YAML"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "nested more than 32 levels"),
        (b"name: t\nguest: {cpus: 1" + b"0" * 5000 + b"}\n", "not a usable spec"),
        (b"name: t\n" + b"#" * (65 * 1024), "more than 64 KiB"),
        (b"name: t\nguest:\n  cpus: 2\n  cpus: 64\n", "key 'cpus' appears twice (lines 3 and 4)"),
    ],
)
def test_files_that_are_not_small_utf8_yaml_are_refused(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    assert expected in refused_file(path)


def test_a_utf8_bom_and_merge_keys_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: t\nguest: &g {cpus: 2}\n")
    assert load_spec(path).variants[0].guest.cpus == 2
    text = (
        "name: t\nguest:\n  disks:\n    - &d {name: a, model: virtio-blk}\n"
        "    - {<<: *d, name: b}\njobs: [{name: j, disk: a, rw: read}]\n"
    )
    path.write_text(text)
    assert [d.name for d in load_spec(path).variants[0].guest.disks] == ["a", "b"]


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "name: x", "guest: {cpus: *a8}"]) + "\n")  # 387M values
    assert "expands to more than 100,000 values" in refused_file(path)


def matrix(values: int, axes: int) -> dict[str, Any]:
    fields = ["cpus", "memory_mib", "cpu_model", "machine", "kernel_args"][:axes]
    guest: dict[str, Any] = {
        "cpus": list(range(1, values + 1)),
        "memory_mib": [256 * (i + 1) for i in range(values)],
        "cpu_model": [f"m{i}" for i in range(values)],
        "machine": [f"pc{i}" for i in range(values)],
        "kernel_args": [f"x={i}" for i in range(values)],
    }
    return {"name": "big", "guest": {f: guest[f] for f in fields}, "jobs": "reference"}


def test_a_big_matrix_says_how_many_cases_and_how_long_and_needs_confirming() -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(matrix(8, 3), max_cases=CONFIRM_CASES)
    message = refused.value.message
    assert (
        "the matrix has 512 cases (guest.cpus x8, guest.memory_mib x8, guest.cpu_model x8)"
        in message
    )
    assert " h at ~" in message
    assert "--yes" in (refused.value.hint or "")
    assert len(parse_spec(matrix(8, 3)).variants) == 512  # confirmed
    with pytest.raises(SpecError, match=f"at most {MAX_CASES:,}"):
        parse_spec(matrix(8, 5))  # 32,768: refused before expanding, even confirmed
