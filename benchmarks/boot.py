"""How long the default guest takes from launch to SSH-ready, against a bare boot of the same
kernel to /init, measured in the same run (a ratio is meaningful; seconds depend on the host).
The bare boot has the same kernel options (the image's command line: console, quiet, no
crypto self-tests...): the ratio is what vmlab adds beyond the kernel, not what options saved.
Each round boots the bare kernel, the slim initramfs (what a case boots unless a job needs an
engine it leaves out) and the full one, back to back, and times ``fio --version`` in each guest.

    .venv/bin/python benchmarks/boot.py [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from vmlab.guest.cpio import NewcWriter, iter_entries
from vmlab.guest.image import authkey_cmdline, build_image
from vmlab.guest.ssh import GuestSSH, lab_key, open_banner, public_line
from vmlab.host import check_host
from vmlab.launch.direct import free_port
from vmlab.launch.qemu import Deadlines, QemuProcess, new_guest_dir

BARE_MARKER = "VMLAB-BARE-INIT"
INIT_STAMP = re.compile(r"vmlab-init: at (?P<up>[0-9.]+) s: (?P<what>.+)")


def bare_initrd(initrd: Path, dest: Path) -> Path:
    """An initramfs of busybox (taken from the default image) and an /init that only says hi."""
    with initrd.open("rb") as fh:
        busybox = next(
            e.data for e in iter_entries(fh) if e.name in ("bin/busybox", "usr/bin/busybox")
        )
    buf = io.BytesIO()
    writer = NewcWriter(buf)
    writer.add_dir("bin")
    writer.add_dir("dev")
    writer.add_chardev("dev/console", 5, 1)
    writer.add_bytes("bin/busybox", busybox, 0o755)
    writer.add_bytes(
        "init",
        f"#!/bin/busybox sh\n/bin/busybox echo {BARE_MARKER}\n/bin/busybox poweroff -f\n".encode(),
        0o755,
    )
    writer.close()
    dest.write_bytes(buf.getvalue())
    return dest


def boot(
    argv: list[str], marker: str, *, ssh: tuple[int, str, object] | None = None
) -> dict[str, float]:
    """Seconds since launch at each stage: the marker on the serial console, then (with ``ssh``)
    the SSH banner, the login, and a first command's answer (= SSH-ready)."""
    guest_dir = new_guest_dir()
    try:
        qmp, serial = guest_dir / "qmp.sock", guest_dir / "serial.log"
        argv = [
            *argv,
            "-chardev",
            f"socket,id=qmp,path={qmp},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            f"file,id=s0,path={serial}",
            "-serial",
            "chardev:s0",
        ]
        with QemuProcess(
            argv,
            guest_dir=guest_dir,
            qmp_socket=qmp,
            serial_log=serial,
            qemu_log=guest_dir / "qemu.log",
            deadlines=Deadlines.for_accel("tcg"),
        ) as vm:
            marks = {"serial marker": vm.wait_serial(marker)}
            if ssh is None:
                return marks
            port, host_key, key = ssh
            banner = open_banner("127.0.0.1", port, timeout_s=60)  # as vmlab.bench.reach
            marks["SSH banner"] = time.monotonic() - vm.started_at
            with GuestSSH.connect(
                "127.0.0.1",
                port,
                user="root",
                key=key,  # type: ignore[arg-type]
                host_key=host_key,
                timeout_s=60,
                sock=banner,
            ) as session:
                marks["SSH login"] = time.monotonic() - vm.started_at
                session.run("true", timeout_s=30)
                marks["first command (SSH-ready)"] = time.monotonic() - vm.started_at
                session.run("fio --version", timeout_s=60)
                marks["fio --version done"] = time.monotonic() - vm.started_at
            for line in serial.read_text(errors="replace").splitlines():
                found = INIT_STAMP.search(line)
                if found:  # /init's own stamps: seconds of kernel uptime, not since launch
                    marks[f"guest uptime: {found['what']}"] = float(found["up"])
            return marks
    finally:
        shutil.rmtree(guest_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    facts = check_host()
    assert facts.qemu is not None, "install qemu-system-x86"
    image = build_image()
    base = [
        facts.qemu,
        "-machine",
        f"q35,accel={facts.accel}",
        "-cpu",
        "host" if facts.accel == "kvm" else "max",
        "-m",
        "512",
        "-smp",
        "2",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        initrd = bare_initrd(image.initrd, Path(tmp) / "bare.img")
        key = lab_key(Path(tmp) / "id_ed25519")
        bare: list[float] = []
        booted: dict[str, list[dict[str, float]]] = {"slim": [], "full": []}
        for _ in range(args.runs):
            bare.append(
                boot(
                    [*base, "-initrd", str(initrd), "-append", image.cmdline],
                    BARE_MARKER,
                )["serial marker"]
            )
            for kind, image_initrd in (("slim", image.slim_initrd), ("full", image.initrd)):
                port = free_port()
                cmdline = f"{image.cmdline} {authkey_cmdline(public_line(key))}"
                booted[kind].append(
                    boot(
                        [
                            *base,
                            "-initrd",
                            str(image_initrd),
                            "-append",
                            cmdline,
                            "-netdev",
                            f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                            "-device",
                            "virtio-net-pci,netdev=n0,romfile=",
                            "-device",
                            "virtio-rng-pci",
                        ],
                        image.ready_marker,
                        ssh=(port, image.host_key, key),
                    )
                )
    b = statistics.median(bare)
    print(f"accelerator: {facts.accel}, kernel {image.kernel.name}, {args.runs} runs each")
    print(f"bare kernel to /init (tiny initramfs): median {b:.2f} s  {[round(x, 2) for x in bare]}")
    for kind, runs in booted.items():
        size = (image.slim_initrd if kind == "slim" else image.initrd).stat().st_size
        ready = [m["first command (SSH-ready)"] for m in runs]
        fio = [m["fio --version done"] - m["first command (SSH-ready)"] for m in runs]
        ratios = [f / x for f, x in zip(ready, bare, strict=True)]  # booted back to back
        f = statistics.median(ready)
        print(
            f"launch to SSH-ready ({kind} initramfs, {size / 2**20:.0f} MiB): median {f:.2f} s  "
            f"{[round(x, 2) for x in ready]}"
        )
        print(
            f"  ratio SSH-ready / bare /init: {f / b:.2f} (per pair: min {min(ratios):.2f}, "
            f"max {max(ratios):.2f}); fio --version in the guest: median "
            f"{statistics.median(fio):.2f} s"
        )
    full = booted["slim"]
    print("slim guest, median seconds since launch and the step from the stage before:")
    before = 0.0
    for stage in (s for s in full[0] if not s.startswith("guest uptime: ")):
        at = statistics.median(m[stage] for m in full)
        print(f"  {stage:28} {at:6.2f}  +{at - before:.2f}")
        before = at
    stamps = [s for s in full[0] if s.startswith("guest uptime: ")]
    if stamps:
        print("inside the slim guest, median seconds of kernel uptime at each /init stage:")
        before = 0.0
        for stage in stamps:
            at = statistics.median(m.get(stage, 0.0) for m in full)
            print(f"  {stage.removeprefix('guest uptime: '):28} {at:6.2f}  +{at - before:.2f}")
            before = at


if __name__ == "__main__":
    main()
