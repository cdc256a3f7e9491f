"""The slim initramfs' stand-ins: parsed from objdump, compiled with gcc, loaded by real fio."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmlab.errors import HostError
from vmlab.guest.boot import needs_full_image
from vmlab.guest.image.initramfs import ldd_closure
from vmlab.guest.image.stubs import (
    EXIT_CODE,
    STUBBED,
    Symbol,
    build_stubs,
    defined_symbols,
    needed_by,
    stub_source,
    stubbed_of,
    undefined_symbols,
)
from vmlab.spec import Disk, FioJob, Guest

FIO = Path("/usr/bin/fio")

OBJDUMP_BINARY = """\
/usr/bin/fio:     file format elf64-x86-64

DYNAMIC SYMBOL TABLE:
0000000000000000      DF *UND*\t0000000000000000 (GFAPI_6.0)  glfs_pwrite_async
0000000000000000      DF *UND*\t0000000000000000  Base        rbd_open
0000000000000000  w   D  *UND*\t0000000000000000  Base        _ITM_deregisterTMCloneTable
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.2.5) write
00000000000a1b20 g    DO .bss\t0000000000000008  Base        fio_debug
"""

OBJDUMP_LIBRARY = """\
0000000000010af0 g    DF .text\t0000000000000124 (IBVERBS_1.0) ibv_get_device_list
00000000000114e0 g    DF .text\t00000000000000fd  IBVERBS_1.1 ibv_get_device_list
0000000000000000 g    DO *ABS*\t0000000000000000  IBVERBS_1.1 IBVERBS_1.1
0000000000203040 g    DO .data\t0000000000000004  Base        verbose
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.2.5) malloc
00000000000010f9 g    DF .text\t000000000000000b vmlab_get
"""


def test_objdump_parsing_keeps_strong_references_and_versions() -> None:
    assert undefined_symbols(OBJDUMP_BINARY) == {
        Symbol("glfs_pwrite_async", "GFAPI_6.0"),
        Symbol("rbd_open", None),
        Symbol("write", "GLIBC_2.2.5"),
    }
    assert defined_symbols(OBJDUMP_LIBRARY) == {
        Symbol("ibv_get_device_list", "IBVERBS_1.0"): True,  # hidden (compat) version
        Symbol("ibv_get_device_list", "IBVERBS_1.1"): True,
        Symbol("verbose", None): False,
        Symbol("vmlab_get", None): True,  # a library without any version information
    }


def test_stub_source_binds_each_version_and_hides_internal_names() -> None:
    source, script = stub_source(
        "libibverbs.so.1",
        [Symbol("ibv_open_device", "IBVERBS_1.1"), Symbol("ibv_fork_init", "IBVERBS_1.0")],
    )
    assert ".symver vmlab_stub_0, ibv_fork_init@@IBVERBS_1.0" in source
    assert ".symver vmlab_stub_1, ibv_open_device@@IBVERBS_1.1" in source
    assert "rdma" in source and f"_exit({EXIT_CODE})" in source
    assert script == (
        "IBVERBS_1.0 { global: ibv_fork_init; };\n"
        "IBVERBS_1.1 { global: ibv_open_device; local: *; };\n"
    )
    plain, none = stub_source("librbd.so.1", [Symbol("rbd_open", None)])
    assert none is None and 'void vmlab_stub_0(void) __asm__("rbd_open");' in plain


def _fio_libraries() -> dict[str, Path]:
    closure = ldd_closure(FIO, Path("/nonexistent-tree"))
    found = stubbed_of(closure)
    assert set(found) == set(STUBBED), f"fio links {sorted(found)}"
    return found


def test_real_fio_loads_with_the_stand_ins_and_an_engine_that_needs_one_says_so(
    tmp_path: Path,
) -> None:
    stubs = build_stubs(FIO, _fio_libraries(), tmp_path / "stubs")
    assert set(stubs) == set(STUBBED)
    full = ldd_closure(FIO, Path("/nonexistent-tree"))
    slim = ldd_closure(FIO, Path("/nonexistent-tree"), tmp_path / "stubs")
    assert not any("libstdc++" in g or "libicudata" in g for g in slim), sorted(slim)
    assert len(slim) < len(full) / 2, (len(slim), len(full))
    assert slim["/usr/lib/x86_64-linux-gnu/librbd.so.1"] == stubs["librbd.so.1"]
    env = {"LD_LIBRARY_PATH": str(tmp_path / "stubs"), "PATH": "/usr/bin:/bin"}
    version = subprocess.run(
        [FIO, "--version"], check=False, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("fio-"), version
    local = subprocess.run(
        [FIO, "--name=x", "--ioengine=psync", f"--filename={tmp_path / 'f'}", "--size=64k",
         "--output-format=json"],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert local.returncode == 0 and '"error" : 0' in local.stdout, local.stderr
    nbd = subprocess.run(
        [FIO, "--name=x", "--ioengine=nbd", "--uri=nbd://127.0.0.1:1", "--size=64k"],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert nbd.returncode == EXIT_CODE, nbd
    assert "nbd_create@LIBNBD_1.0 is a stand-in of libnbd.so.0" in nbd.stderr, nbd.stderr


def test_a_library_fio_takes_data_from_cannot_be_stood_in_for(tmp_path: Path) -> None:
    (tmp_path / "lib.c").write_text("int vmlab_counter = 1;\nint vmlab_get(void) { return 2; }\n")
    (tmp_path / "main.c").write_text(
        "extern int vmlab_counter; int vmlab_get(void);\n"
        "int main(void) { return vmlab_counter + vmlab_get(); }\n"
    )
    lib, exe = tmp_path / "libdemo.so.1", tmp_path / "demo"
    gcc = ["gcc", "-fPIC", "-o"]
    subprocess.run([*gcc, lib, "-shared", "-Wl,-soname,libdemo.so.1", tmp_path / "lib.c"],
                   check=True)  # fmt: skip
    subprocess.run([*gcc, exe, tmp_path / "main.c", lib], check=True)
    with pytest.raises(HostError, match=r"demo takes data \(vmlab_counter\) from libdemo"):
        needed_by(exe, {"libdemo.so.1": lib})


def test_the_full_initramfs_is_for_jobs_on_the_engines_the_slim_one_stands_in_for() -> None:
    local = Guest(disks=[Disk(name="data")])
    lab = [{"name": "lab0", "attach": "tap"}]
    job = FioJob(name="rr", rw="randread")
    assert not needs_full_image(local, [job])
    assert needs_full_image(local, [job, job.model_copy(update={"ioengine": "rbd"})])
    client = {"name": "data", "target": "guest", "backend": {"type": "rbd", "size": "1G"}}
    assert needs_full_image(Guest.model_validate({"disks": [client], "nics": lab}), [job])
    krbd = {**client, "backend": {"type": "rbd", "size": "1G", "krbd": True}}
    assert not needs_full_image(Guest.model_validate({"disks": [krbd], "nics": lab}), [job])


IPERF3 = Path("/usr/bin/iperf3")


@pytest.mark.skipif(not IPERF3.exists(), reason="iperf3 is not installed (scripts/setup does)")
def test_iperf3_runs_on_loopback_with_the_libcrypto_stand_in_and_its_rsa_option_says_so(
    tmp_path: Path,
) -> None:
    """vmlab's iperf3 client options all work without libcrypto; only --rsa-* needs it."""
    from vmlab.guest.image.stubs import FEATURE_STUBBED, build_feature_stubs
    from vmlab.launch.direct import free_port
    from vmlab.net.iperf import client_argv

    closure = ldd_closure(IPERF3, Path("/nonexistent-tree"))
    stubs = build_feature_stubs(closure, tmp_path / "stubs")
    assert set(stubs) == set(FEATURE_STUBBED) == {"libcrypto.so.3"}
    slim = ldd_closure(IPERF3, Path("/nonexistent-tree"), tmp_path / "stubs")
    assert slim["/usr/lib/x86_64-linux-gnu/libcrypto.so.3"] == stubs["libcrypto.so.3"]
    env = {"LD_LIBRARY_PATH": str(tmp_path / "stubs"), "PATH": "/usr/bin:/bin"}
    for options in ({}, {"reverse": True}, {"udp": True, "bitrate": "10M"}, {"parallel": 2}):
        port = free_port()
        server = subprocess.Popen(
            [IPERF3, "--server", "--one-off", "--port", str(port), "--bind", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            argv = client_argv("127.0.0.1", port=port, duration_s=1, iperf3=str(IPERF3), **options)
            for _ in range(50):  # until the server listens
                client = subprocess.run(
                    argv, env=env, capture_output=True, text=True, timeout=30, check=False
                )
                if "Connection refused" not in client.stdout + client.stderr:
                    break
            assert client.returncode == 0, (options, client.stdout[-400:], client.stderr)
            assert '"bits_per_second"' in client.stdout
        finally:
            server.kill()
            server.wait()
    (tmp_path / "key.pem").write_text("not a key: the stand-in stops before reading it\n")
    rsa = subprocess.run(
        [IPERF3, "--client", "127.0.0.1", "--port", str(free_port()), "--username", "u",
         "--rsa-public-key-path", str(tmp_path / "key.pem")],
        env={**env, "IPERF3_PASSWORD": "p"}, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert rsa.returncode == EXIT_CODE, rsa
    assert "is a stand-in of libcrypto.so.3" in rsa.stderr, rsa.stderr
