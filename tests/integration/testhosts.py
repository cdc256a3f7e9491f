"""Throwaway SSH hosts on this machine: one network namespace each, with its own sshd.

A fleet run needs hosts; these are the cheapest real ones. Per host :class:`TestHosts` makes a
namespace with only its loopback up, and ``/usr/sbin/sshd -D`` listening on that namespace's
127.0.0.1:22, with a generated host key and a generated client key authorised for root. Ansible
reaches each over real SSH through a ProxyCommand that enters the namespace
(``ip netns exec NS socat - TCP:127.0.0.1:22``), with the host keys pinned in a generated
known_hosts file: no address or route is ever added outside the namespaces. Behind SSH they
share this machine's filesystem, so the ``vmlab`` they run is one installed here.

Test infrastructure, not part of the vmlab package: used by the fleet integration tests
(imported as ``testhosts``, pytest puts this folder on sys.path) and ``benchmarks/fleet.py``;
also a way to try ``vmlab fleet run`` without a fleet (see ``inventory()``). Needs root,
iproute2, socat and openssh-server (only the sshd binary: no system sshd is started).

Everything made here is undone on exit, also on errors and Ctrl-C: processes still inside a
namespace (sshd, its sessions, whatever they started) get SIGINT, then SIGKILL; SSH control
masters left by Ansible are told to exit; namespaces and the work directory go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmlab.errors import CommandError, GuestError, HostError
from vmlab.guest.ssh import wait_banner
from vmlab.net.netns import call_in_netns

log = logging.getLogger(__name__)

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVERS = (Path("/usr/lib/openssh/sftp-server"), Path("/usr/libexec/openssh/sftp-server"))
PRIVSEP_DIR = Path("/run/sshd")
NETNS_DIR = Path("/run/netns")
SOCAT = "socat"
IP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
"""How long processes left in a namespace get after SIGINT (vmlab stops its guests) before
SIGKILL."""
NAME_PREFIX = "vmlft"
"""Namespaces and links are named vmlft-*: not vmlab-*, which vmlab.net sweeps as its own."""


@dataclass(frozen=True)
class TestHost:
    """One namespace host: its inventory name, namespace and private folder. Its sshd listens
    on the namespace's own loopback; :meth:`proxy_command` is how SSH gets there."""

    __test__ = False  # not a pytest test class

    name: str
    netns: str
    workdir: Path

    @property
    def proxy_command(self) -> str:
        """An OpenSSH ProxyCommand: a byte pipe to 127.0.0.1:22 inside the host's namespace."""
        return f"ip netns exec {self.netns} {SOCAT} - TCP:127.0.0.1:22"


def _ip(*args: str) -> None:
    argv = ["ip", *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"ip did not finish within {IP_TIMEOUT_S:.0f} s", argv=argv, returncode=None
        ) from exc
    if done.returncode != 0:
        raise CommandError(
            "ip failed",
            argv=argv,
            returncode=done.returncode,
            output=done.stderr,
            hint="namespaces, veths and bridges need root and iproute2",
        )


def _keypair() -> tuple[bytes, str]:
    """An ed25519 key: (OpenSSH private key PEM, public line 'ssh-ed25519 AAAA...')."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)


def _netns_inode(netns: str) -> int | None:
    try:
        return (NETNS_DIR / netns).stat().st_ino
    except OSError:
        return None


def pids_in_netns(netns: str) -> list[int]:
    """Live (not zombie) processes whose network namespace is ``netns``."""
    inode = _netns_inode(netns)
    if inode is None:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino != inode:
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(int(proc.name))
    return found


def _signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class TestHosts:
    """Namespace hosts with sshd, as a context manager (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, names: Sequence[str], *, ready_timeout_s: float = READY_TIMEOUT_S):
        if not names or len(set(names)) != len(names) or len(names) > 250:
            raise HostError(f"need 1 to 250 distinct host names, got {list(names)}")
        self.names = list(names)
        self.ready_timeout_s = ready_timeout_s
        self.tag = secrets.token_hex(3)
        self.workdir = Path("/nonexistent")
        self.hosts: list[TestHost] = []
        self._sshd: dict[str, subprocess.Popen[bytes]] = {}
        self._made_netns: list[str] = []

    # -- paths -----------------------------------------------------------------------------
    @property
    def client_key(self) -> Path:
        return self.workdir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def control_dir(self) -> Path:
        """Where Ansible's SSH control sockets go (short paths, closed on exit)."""
        return self.workdir / "cp"

    def host(self, name: str) -> TestHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self._preflight()
        # short: unix socket paths under it must stay below 108 bytes
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{NAME_PREFIX}-"))
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = self.close()
        if problems and exc is None:
            raise HostError(
                "test hosts were not cleaned up completely: " + "; ".join(problems),
                hint=f"check `ip netns list` for {NAME_PREFIX}* leftovers",
            )

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise HostError("namespace test hosts need root", hint="run as root (or sudo)")
        if shutil.which("ip") is None:
            raise HostError("the `ip` command is missing", hint="apt-get install iproute2")
        if shutil.which(SOCAT) is None:
            raise HostError("socat is missing (the SSH ProxyCommand)", hint="apt-get install socat")
        if not SSHD.is_file():
            raise HostError(
                f"{SSHD} is missing",
                hint="apt-get install --no-install-recommends openssh-server "
                "(with policy-rc.d denying service starts, no system sshd is started)",
            )

    def _start(self) -> None:
        (self.workdir / "cp").mkdir(mode=0o700)
        private, public = _keypair()
        _write_private(self.client_key, private)
        (self.workdir / "client_key.pub").write_text(public + "\n")
        (self.workdir / "authorized_keys").write_text(public + " vmlab-testhosts\n")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation chroot
        known = []
        for index, name in enumerate(self.names, start=1):
            host = TestHost(
                name=name,
                netns=f"{NAME_PREFIX}-{self.tag}-{index}",
                workdir=self.workdir / f"h{index}",
            )
            host.workdir.mkdir()
            _ip("netns", "add", host.netns)
            self._made_netns.append(host.netns)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            known.append(f"{host.name} {self._start_sshd(host)}")
            self.hosts.append(host)
        self.known_hosts.write_text("\n".join(known) + "\n")
        for host in self.hosts:
            self._wait_ready(host)
        log.info("test hosts up: %s", ", ".join(f"{h.name} ({h.netns})" for h in self.hosts))

    def _start_sshd(self, host: TestHost) -> str:
        """Start sshd inside the host's namespace; returns its host key's public line."""
        private, public = _keypair()
        key = host.workdir / "host_key"
        _write_private(key, private)
        sftp = next((p for p in SFTP_SERVERS if p.is_file()), SFTP_SERVERS[0])
        config = host.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",  # the namespace's own loopback
                    "Port 22",
                    f"HostKey {key}",
                    f"PidFile {host.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",  # keys live under /tmp
                    "PrintMotd no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    f"Subsystem sftp {sftp}",
                    "",
                ]
            )
        )
        logfile = (host.workdir / "sshd.log").open("wb")
        with logfile:
            self._sshd[host.name] = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return public

    def _wait_ready(self, host: TestHost) -> None:
        proc = self._sshd[host.name]
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if proc.poll() is not None:
                tail = (host.workdir / "sshd.log").read_text(errors="replace").strip()[-600:]
                raise HostError(
                    f"sshd of test host {host.name} exited with {proc.returncode}: {tail}",
                    hint="run the sshd command by hand with -d to see why",
                )
            try:
                call_in_netns(
                    host.netns, lambda: wait_banner("127.0.0.1", 22, timeout_s=1.0), timeout_s=5
                )
                return
            except GuestError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    # -- for tests: making a host fail -----------------------------------------------------
    def pids(self, name: str) -> list[int]:
        return pids_in_netns(self.host(name).netns)

    def kill_sshd(self, name: str) -> list[int]:
        """SIGKILL every sshd of a host (listener and sessions): it becomes unreachable, and
        what its sessions run loses its SSH channel. Returns the pids killed."""
        victims = [pid for pid in self.pids(name) if _comm(pid) == "sshd"]
        _signal_all(victims, signal.SIGKILL)
        proc = self._sshd.get(name)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        log.info("killed sshd of %s: %s", name, victims)
        return victims

    # -- inventory -------------------------------------------------------------------------
    def connection_vars(self) -> dict[str, str]:
        """Ansible connection variables: root with the client key, host keys pinned."""
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                "-o IdentitiesOnly=yes -o ConnectTimeout=10"
            ),
            "ansible_control_path_dir": str(self.control_dir),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def inventory(
        self,
        *,
        group_vars: Mapping[str, Any] | None = None,
        host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A YAML/JSON inventory of these hosts (group ``all``)."""
        hosts: dict[str, Any] = {}
        for h in self.hosts:
            hosts[h.name] = {
                "ansible_host": h.name,  # not resolved: the ProxyCommand is the way in
                "ansible_ssh_extra_args": f"-o ProxyCommand='{h.proxy_command}'",
                **dict((host_vars or {}).get(h.name, {})),
            }
        return {"all": {"hosts": hosts, "vars": {**self.connection_vars(), **(group_vars or {})}}}

    def vmlab_inventory(
        self, root: Path, *, vmlab_bin: Path, group_vars: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """An inventory for bench.yml: every host runs ``vmlab_bin`` with its own vmlab state,
        runtime and scratch folders and its own remote folder, all made under ``root/<host>/``
        (the hosts share this machine's filesystem). No become: the hosts log in as root."""
        host_vars: dict[str, dict[str, Any]] = {}
        for h in self.hosts:
            dirs = {n: root / h.name / n for n in ("state", "runtime", "scratch", "remote")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            host_vars[h.name] = {
                "vmlab_env": {
                    "VMLAB_STATE": str(dirs["state"]),
                    "VMLAB_RUNTIME": str(dirs["runtime"]),
                    "VMLAB_SCRATCH": str(dirs["scratch"]),
                },
                "vmlab_remote_dir": str(dirs["remote"]),
            }
        return self.inventory(
            group_vars={"vmlab_bin": str(vmlab_bin), "ansible_become": False, **(group_vars or {})},
            host_vars=host_vars,
        )

    # -- cleanup ---------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Undo everything; returns what could not be undone (also logged). Idempotent."""
        problems: list[str] = []
        self._stop_processes(problems)
        self._close_control_masters()
        for netns in reversed(self._made_netns):
            try:
                _ip("netns", "del", netns)
            except CommandError as exc:
                problems.append(f"namespace {netns}: {exc}")
        self._made_netns.clear()
        if self.workdir.name.startswith(f"{NAME_PREFIX}-") and self.workdir.is_dir():
            shutil.rmtree(self.workdir, ignore_errors=True)
        for problem in problems:
            log.warning("test hosts cleanup: %s", problem)
        return problems

    def _stop_processes(self, problems: list[str]) -> None:
        def remaining() -> list[int]:
            return [pid for ns in self._made_netns for pid in pids_in_netns(ns)]

        left = remaining()
        if left:
            log.info("stopping %d processes left in the test namespaces", len(left))
            _signal_all(left, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while (left := remaining()) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_all(left, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (left := remaining()) and time.monotonic() < deadline:
                time.sleep(0.1)
            if left:
                problems.append(f"processes still alive after SIGKILL: {left}")
        for name, proc in self._sshd.items():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                problems.append(f"sshd of {name} did not exit")
        self._sshd.clear()

    def _close_control_masters(self) -> None:
        if not self.control_dir.is_dir():
            return
        for sock in self.control_dir.iterdir():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(
                    ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "testhost"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
