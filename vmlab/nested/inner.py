"""Inside a booted L1: mount its disks, load the modules its cases need, run the inner bench
in the background and follow its log, and carry its run directory back out.

The inner bench is this vmlab from the payload disk (``python3 -m vmlab.cli bench --ci``),
with the L2 guest image the host built (``VMLAB_GUEST_IMAGE``) and its scratch files and
results on L1's scratch disk. It runs detached (``setsid``) and writes ``bench.log`` and, when
it ends, its exit code to ``rc``; the host polls both, so a dropped SSH connection never kills
it and every line it prints becomes progress on the host.
"""

from __future__ import annotations

import io
import logging
import re
import shlex
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import GuestError
from vmlab.guest.ssh import GuestSSH
from vmlab.nested.boot import SCRATCH_SERIAL
from vmlab.nested.payload import PAYLOAD_SERIAL
from vmlab.tarball import extract_data

log = logging.getLogger(__name__)

TOP = "/root/nested"
PAYLOAD = f"{TOP}/payload"
WORK = f"{TOP}/work"  # the scratch disk
RESULTS = f"{WORK}/results"
BENCH_LOG = f"{WORK}/bench.log"
RC_FILE = f"{WORK}/rc"
POLL_INTERVAL_S = 3.0
COMMAND_TIMEOUT_S = 120.0


def mount_script(modules: Sequence[str], *, configfs: bool, spdk: str | None = None) -> str:
    """Shell for L1: the payload (read-only) and scratch disks by serial, then the modules;
    ``spdk``: the host's SPDK prefix, where L1 links the payload's copy (its RUNPATH)."""
    lines = [
        "set -e",
        f"mkdir -p {PAYLOAD} {WORK}",
        "for d in /sys/block/*; do",
        '  s=$(cat "$d/serial" 2>/dev/null || true)',
        '  case "$s" in',
        f"    {PAYLOAD_SERIAL}) mountpoint -q {PAYLOAD} || "
        f"mount -o ro /dev/${{d##*/}} {PAYLOAD} ;;",
        f"    {SCRATCH_SERIAL}) mountpoint -q {WORK} || mount /dev/${{d##*/}} {WORK} ;;",
        "  esac",
        "done",
        f"mountpoint -q {PAYLOAD} && mountpoint -q {WORK}",
    ]
    # One by one, and a missing one is only a warning: the inner bench's preflight then names
    # what this kernel lacks for which case (a cloud kernel has no vhost_scsi, for one).
    lines += [f"modprobe {m} || echo 'L1: no kernel module {m}' >&2" for m in modules]
    if configfs:
        lines.append(
            "mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config"
        )
    if spdk is not None:
        parent = str(Path(spdk).parent)
        lines.append(
            f"mkdir -p {shlex.quote(parent)} && ln -sfn {PAYLOAD}/spdk {shlex.quote(spdk)}"
        )
    return "\n".join(lines) + "\n"


# libvirtd in L1 runs QEMU as root without relabelling: L2's image is on the read-only payload
# disk, which libvirt's dynamic ownership would try to chown (and without libvirt-daemon-system
# there is neither a qemu.conf nor its libvirt-qemu user).
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
"""
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
LIBVIRT_WAIT_S = 600  # libvirtd probes QEMU's capabilities first: minutes under TCG-in-TCG


def libvirt_script() -> str:
    """Shell for L1: virtlogd and libvirtd, each under vmlab's reaper (L1's PID 1 reaps
    nothing), detached, logs on the scratch disk; returns once libvirtd answers, fails at once
    with its log if it exits first."""
    env = f"PYTHONPATH={PAYLOAD}/src PYTHONDONTWRITEBYTECODE=1"
    log = f"{WORK}/libvirtd.log"
    lines = [
        "set -e",
        # libvirtd resolves its built-in QEMU user before it reads qemu.conf: it must exist
        # (libvirt-daemon-system, which L1 goes without, would add it).
        "for g in kvm libvirt-qemu; do getent group $g > /dev/null || groupadd --system $g; done",
        "getent passwd libvirt-qemu > /dev/null || useradd --system --no-create-home "
        "--home-dir /var/lib/libvirt --gid kvm --groups libvirt-qemu "
        "--shell /usr/sbin/nologin libvirt-qemu",
        "mkdir -p /etc/libvirt",  # qemu.conf is libvirt-daemon-system's too
        f"cat > /etc/libvirt/qemu.conf <<'EOF'\n{QEMU_CONF}EOF",
        # The network driver writes each network's guest MACs under dnsmasq/ (no DHCP here,
        # but it does) and does not make the folder; libvirt-daemon-system's packaging would.
        "mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/dnsmasq",
    ]
    for daemon in ("virtlogd", "libvirtd"):
        lines.append(
            f"setsid nohup env {env} python3 -m vmlab.reaper {daemon} "
            f"> {WORK}/{daemon}.log 2>&1 < /dev/null &"
        )
    lines += [
        "pid=$!",
        f"deadline=$(( $(date +%s) + {LIBVIRT_WAIT_S} ))",
        "until python3 -c 'import socket; "
        f'socket.socket(socket.AF_UNIX).connect("{LIBVIRT_SOCKET}")\' 2> /dev/null; do',
        f'  kill -0 "$pid" 2> /dev/null || {{ echo "libvirtd exited:" >&2; tail -20 {log} >&2; '
        "exit 1; }",
        '  [ "$(date +%s)" -lt "$deadline" ] || '
        f"{{ echo 'libvirtd did not answer:' >&2; tail -20 {log} >&2; exit 1; }}",
        "  sleep 1",
        "done",
    ]
    return "\n".join(lines) + "\n"


def bench_command(
    *, timeout_scale: float, l2_key: str, spdk: str | None = None, resume: str | None = None
) -> str:
    """The inner bench, detached; its exit code goes to ``rc`` when it ends. ``resume``: the
    inner run (its id under ``RESULTS``, as an earlier attempt left it) to finish instead."""
    env = {
        "PYTHONPATH": f"{PAYLOAD}/src:{PAYLOAD}/site",
        "VMLAB_GUEST_IMAGE": f"{PAYLOAD}/l2/{l2_key}",
        "VMLAB_SCRATCH": f"{WORK}/scratch",
        "VMLAB_CACHE": f"{WORK}/cache",
        "PYTHONDONTWRITEBYTECODE": "1",  # the payload is read-only
    }
    if spdk is not None:
        env["VMLAB_SPDK"] = spdk
    what = ["--resume", f"{RESULTS}/{resume}"] if resume else [f"{PAYLOAD}/spec.yaml"]
    argv = [
        "python3", "-m", "vmlab.cli", "bench", *what, "--ci",
        "--results", RESULTS, "--timeout-scale", f"{timeout_scale:g}",
    ]  # fmt: skip
    inner = (
        f"cd {WORK} && env {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} "
        f"{shlex.join(argv)} > {BENCH_LOG} 2>&1; echo $? > {RC_FILE}"
    )
    return (
        f"rm -f {RC_FILE}; : > {BENCH_LOG}; "
        f"setsid nohup sh -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null &"
    )


_CASE_LINE = re.compile(r"^case (\d+)/(\d+): (\S+)$")


@dataclass
class Follow:
    """What the host has read of the inner bench's log so far."""

    offset: int = 0
    pending: str = ""
    current: str | None = None  # the inner case id running now


def follow_bench(
    ssh: GuestSSH,
    *,
    timeout_s: float,
    line: Callable[[str | None, str], None],
    alive: Callable[[], None] = lambda: None,
) -> int:
    """Poll the inner bench until it ends; each new log line goes to ``line(case, text)``.
    Returns its exit code. ``alive`` raises when L1 itself has gone."""
    state = Follow()
    deadline = time.monotonic() + timeout_s
    while True:
        alive()
        got = ssh.run(
            f"cat {RC_FILE} 2>/dev/null; echo; echo @@; tail -c +{state.offset + 1} {BENCH_LOG}",
            timeout_s=COMMAND_TIMEOUT_S,
        ).stdout
        head, _, new = got.partition(b"@@\n")
        state.offset += len(new)
        text = state.pending + new.decode(errors="replace")
        *complete, state.pending = text.split("\n")
        for item in complete:
            if match := _CASE_LINE.match(item.strip()):
                state.current = match.group(3)
            if item.strip():
                line(state.current, item.rstrip())
        rc = head.decode().strip()
        if rc:
            if state.pending.strip():
                line(state.current, state.pending.rstrip())
            return int(rc)
        if time.monotonic() > deadline:
            raise GuestError(
                f"the bench inside L1 did not end within {timeout_s:.0f} s",
                hint=f"see {BENCH_LOG} (kept in the run under hosts/)",
            )
        time.sleep(POLL_INTERVAL_S)


def stop_bench(ssh: GuestSSH, *, grace_s: float) -> int | None:
    """Ask the inner bench to stop as an interrupted run (SIGTERM: a background job of a
    shell ignores SIGINT) and wait up to ``grace_s`` for it to end; its exit code, or None."""
    ssh.run(f"pkill -TERM -f {shlex.quote('-m vmlab.cli bench')}", timeout_s=30, check=False)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        rc = ssh.run(f"cat {RC_FILE} 2>/dev/null", timeout_s=30, check=False).text.strip()
        if rc:
            return int(rc)
        time.sleep(1.0)
    return None


def fetch_results(ssh: GuestSSH, dest: Path) -> bytes:
    """The inner results directory (with bench.log) as a tar over SSH, unpacked into ``dest``;
    returns the tar, which the host keeps as it came (a resumed run sends it back in)."""
    got = ssh.run(f"cd {WORK} && tar -cf - $(ls -d results bench.log 2>/dev/null)", timeout_s=600)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        extract_data(tar, dest)
    return got.stdout


def send_results(ssh: GuestSSH, tar: bytes) -> None:
    """An earlier attempt's inner results (:func:`fetch_results`' tar) back onto the scratch
    disk, for the inner bench to resume."""
    ssh.run(f"cd {WORK} && tar -xf - results", timeout_s=600, stdin=tar)


def l1_uname(ssh: GuestSSH) -> str:
    return ssh.run("uname -r", timeout_s=COMMAND_TIMEOUT_S).text.strip()
