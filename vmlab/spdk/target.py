"""One SPDK target, started by vmlab (``vhost -r SOCK -S DIR -m MASK -s MB``) or run by the user
(vmlab attaches to its RPC socket), and the disks vmlab made on it.

``with target:`` starts or attaches; :meth:`SpdkTarget.add_disk` runs a disk's plan and
returns what QEMU connects to; :meth:`SpdkTarget.remove_disk` deletes what that plan created,
newest first. On exit (also on exceptions and KeyboardInterrupt) every disk still there is
removed and a target vmlab started is stopped (SIGINT, SPDK's clean shutdown, then SIGKILL);
its private directory (RPC and vhost-user sockets) and hugetlbfs mount go with it.

A target that dies under vmlab (:meth:`SpdkTarget.failure`) leaves nothing to delete: its
bdevs and controllers died with it, and the cleanup only removes what is on the host.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from vmlab import hugepages
from vmlab.errors import CommandError, HostError, LaunchError
from vmlab.paths import check_socket_path, runtime_dir
from vmlab.proc import Deadline, ManagedProcess
from vmlab.spdk.cpumask import format_cpumask
from vmlab.spdk.plan import DiskPlan, RpcCall, undo_call
from vmlab.spdk.rpc import SpdkRpc, SpdkVersion

log = logging.getLogger(__name__)

HUGEPAGE_HINT = (
    "SPDK needs 2 MiB hugepages and a hugetlbfs mount; as root vmlab reserves and mounts "
    "them for the run, otherwise: echo N > /proc/sys/vm/nr_hugepages; "
    "mount -t hugetlbfs nodev /dev/hugepages"
)


@dataclass(frozen=True)
class SpdkApp:
    """How vmlab starts an SPDK app itself: ``vhost`` (or ``spdk_tgt``) of an SPDK build."""

    binary: str
    cpumask: int = 0x1
    mem_size_mib: int | None = None  # -s; None: SPDK takes what hugepages it finds

    def argv(self, *, rpc_socket: Path, vhost_socket_dir: Path, huge_dir: Path | None) -> list[str]:
        """``BINARY -r RPC_SOCKET -S VHOST_SOCKET_DIR -m MASK --no-pci [-s MB] [--huge-dir D]``:
        no PCI, as vhost and these bdevs use no device (DPDK would probe the host's)."""
        argv = [
            self.binary,
            "-r",
            str(rpc_socket),
            "-S",
            str(vhost_socket_dir),
            "-m",
            format_cpumask(self.cpumask),
            "--no-pci",
        ]
        if self.mem_size_mib is not None:
            argv += ["-s", str(self.mem_size_mib)]
        if huge_dir is not None:
            argv += ["--huge-dir", str(huge_dir)]
        return argv


@dataclass(frozen=True)
class ServedDisk:
    """A disk the target serves: QEMU connects to ``socket``; ``undo`` deletes it."""

    name: str
    ctrlr: str
    socket: Path
    undo: tuple[RpcCall, ...] = field(default=(), repr=False)  # newest first


class SpdkTarget:
    """An SPDK target vmlab attached to (:meth:`attach`) or started (:meth:`spawn`)."""

    def __init__(
        self,
        *,
        rpc_socket: Path | None,
        vhost_socket_dir: Path | None,
        app: SpdkApp | None,
        log_path: Path | None,
        runtime_root: Path | None,
        ready_timeout_s: float,
        rpc_timeout_s: float,
        stop_timeout_s: float,
    ) -> None:
        self._rpc_socket = rpc_socket
        self.vhost_socket_dir = vhost_socket_dir
        self.app = app
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: ManagedProcess | None = None
        self.rpc: SpdkRpc | None = None
        self.version: SpdkVersion | None = None
        self.disks: list[ServedDisk] = []
        self._runtime_root = runtime_root
        self._private_dir: Path | None = None
        self._host = ExitStack()  # the hugetlbfs mount
        self._started_at = 0.0
        self._died: str | None = None  # how a started target ended, once vmlab saw it

    @property
    def rpc_socket(self) -> Path:
        """The target's RPC socket (for a spawned target: known once it was started)."""
        if self._rpc_socket is None:
            raise LaunchError("the SPDK target was not started", hint="use it inside `with`")
        return self._rpc_socket

    @property
    def spawned(self) -> bool:
        return self.app is not None

    @classmethod
    def attach(
        cls,
        rpc_socket: Path,
        *,
        vhost_socket_dir: Path | None = None,
        ready_timeout_s: float = 5.0,
        rpc_timeout_s: float = 30.0,
    ) -> SpdkTarget:
        """A target someone else runs; ``vhost_socket_dir`` (its -S) is only needed for SPDK
        releases whose vhost_get_controllers does not report the socket."""
        return cls(
            rpc_socket=rpc_socket,
            vhost_socket_dir=vhost_socket_dir,
            app=None,
            log_path=None,
            runtime_root=None,
            ready_timeout_s=ready_timeout_s,
            rpc_timeout_s=rpc_timeout_s,
            stop_timeout_s=0.0,
        )

    @classmethod
    def spawn(
        cls,
        app: SpdkApp,
        *,
        log_path: Path,
        runtime_root: Path | None = None,
        ready_timeout_s: float = 60.0,
        rpc_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> SpdkTarget:
        """A target vmlab starts, with its RPC and vhost sockets in a private directory
        (``rpc.sock`` and the controllers' sockets in ``runtime_root``/spdk-XXXX, made on
        enter and removed on exit)."""
        return cls(
            rpc_socket=None,
            vhost_socket_dir=None,
            app=app,
            log_path=log_path,
            runtime_root=runtime_root,
            ready_timeout_s=ready_timeout_s,
            rpc_timeout_s=rpc_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )

    # -- start -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.app is not None:
            self._spawn(self.app)
        self._wait_ready()
        assert self.rpc is not None
        self.rpc.wait_init()
        log.info(
            "SPDK target on %s: %s", self.rpc_socket, self.version.text if self.version else ""
        )

    def _huge_dir(self, private: Path) -> Path | None:
        """Where DPDK maps its memory from: a private hugetlbfs when vmlab may mount one, else
        the host's own mount (None: DPDK looks for one itself, and fails without)."""
        if hugepages.can_mount():
            return self._host.enter_context(hugepages.hugetlbfs_mount(private / "huge"))
        mounts = hugepages.hugetlbfs_mounts()
        return mounts[0] if mounts else None

    def _spawn(self, app: SpdkApp) -> None:
        assert self.log_path is not None
        root = self._runtime_root or runtime_dir()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._private_dir = Path(tempfile.mkdtemp(prefix="spdk-", dir=root))
        self._rpc_socket = self._private_dir / "rpc.sock"
        self.vhost_socket_dir = self._private_dir
        check_socket_path(self.rpc_socket, "the SPDK RPC socket")
        argv = app.argv(
            rpc_socket=self.rpc_socket,
            vhost_socket_dir=self.vhost_socket_dir,
            huge_dir=self._huge_dir(self._private_dir),
        )
        self.process = ManagedProcess(
            argv,
            log_path=self.log_path,
            what=f"SPDK {Path(app.binary).name}",
            stop_signal=signal.SIGINT,  # SPDK's clean shutdown
            grace_s=self.stop_timeout_s,
            missing_hint="build SPDK (https://spdk.io/doc/getting_started.html) and name its "
            "build/bin/vhost, or put it on PATH, or set VMLAB_SPDK",
        )
        self.note(f"starting {' '.join(argv)}")
        self.process.start()
        self._started_at = self.process.started_at

    def _wait_ready(self) -> None:
        """Until ``spdk_get_version`` answers, the process exits, or the deadline passes."""
        deadline = Deadline(self.ready_timeout_s, "SPDK RPC socket")
        last_error = "the socket never appeared"
        while True:
            if self.process is not None and not self.process.running():
                try:
                    self.process.check_running("before its RPC socket answered")
                except LaunchError as exc:
                    raise LaunchError(exc.message, log=self.log_path, hint=HUGEPAGE_HINT) from exc
            if self.rpc_socket.exists():
                timeout_s = max(0.05, min(self.rpc_timeout_s, deadline.remaining_s()))
                probe = SpdkRpc(self.rpc_socket, timeout_s=timeout_s)
                try:
                    self.version = probe.version()
                except (HostError, CommandError) as exc:
                    probe.close()
                    last_error = str(exc)
                else:
                    probe.timeout_s = self.rpc_timeout_s
                    self.rpc = probe
                    return
            if deadline.expired():
                break
            time.sleep(0.05)
        if self.process is None:
            raise HostError(
                f"no SPDK target answers on {self.rpc_socket} within "
                f"{self.ready_timeout_s:g} s: {last_error}",
                hint="start one (vhost -r SOCKET -S DIR -m MASK) or fix spdk.rpc_socket; "
                "or leave rpc_socket out and vmlab starts SPDK itself",
            )
        raise LaunchError(
            f"{self.process.what} did not answer on {self.rpc_socket} within "
            f"{self.ready_timeout_s:g} s: {last_error}",
            log=self.log_path,
            hint=f"read its log. {HUGEPAGE_HINT}",
        )

    # -- disks -----------------------------------------------------------------------------

    def add_disk(self, plan: DiskPlan) -> ServedDisk:
        """Run ``plan.setup``; a failure deletes what the plan had created so far."""
        if self.rpc is None:
            raise LaunchError("the SPDK target is not running", hint="use it inside `with`")
        if plan.cpumask is not None:
            self.rpc.check_cpumask(plan.cpumask)  # before anything is created
        undo: list[RpcCall] = []
        try:
            for call in plan.setup:
                result = self.rpc.call(call.method, call.params)
                if (reverse := undo_call(call, result)) is not None:
                    undo.insert(0, reverse)
            socket = self._socket_of(plan.ctrlr)
        except BaseException:
            self._undo(undo)
            raise
        disk = ServedDisk(plan.name, plan.ctrlr, socket, tuple(undo))
        self.disks.append(disk)
        return disk

    def _socket_of(self, ctrlr: str) -> Path:
        assert self.rpc is not None
        path = self.rpc.controller_socket(ctrlr)
        if path is None and self.vhost_socket_dir is not None:
            path = self.vhost_socket_dir / ctrlr
        if path is None:
            raise HostError(
                f"the SPDK target does not say where the socket of {ctrlr} is",
                hint="give vmlab the target's vhost socket directory (its -S option)",
            )
        check_socket_path(path, f"the vhost-user socket of {ctrlr}")
        return path

    def remove_disk(self, disk: ServedDisk) -> None:
        """Delete the controller and bdevs of ``disk`` (nothing to do on a dead target)."""
        if disk in self.disks:
            self.disks.remove(disk)
            self._undo(list(disk.undo))

    def _undo(self, calls: list[RpcCall]) -> None:
        if not calls:
            return
        if self.rpc is None or self.failure() is not None:
            log.warning("SPDK target is gone; its %d objects went with it", len(calls))
            return
        failed: list[str] = []
        for i, call in enumerate(calls):
            try:
                self.rpc.call(call.method, call.params)
            except (CommandError, HostError) as exc:
                log.error("SPDK cleanup %s failed: %s", call, exc)
                failed.append(str(call))
                if not isinstance(exc, CommandError) or exc.returncode is None:
                    # no answer or no connection: the target is stuck or gone
                    failed += [str(c) for c in calls[i + 1 :]]
                    break
        if failed and not self.spawned:  # a target the user runs keeps them
            log.error(
                "left on the SPDK target %s (delete them with rpc.py -s %s): %s",
                self.rpc_socket,
                self.rpc_socket,
                "; ".join(failed),
            )

    # -- health ----------------------------------------------------------------------------

    def failure(self) -> LaunchError | None:
        """Why the target is gone, if it is: a started one exited, or a user's target's
        socket vanished. None while it runs."""
        if self.process is not None:
            proc = self.process.proc
            if proc is None or proc.poll() is None:
                return None
            code = proc.returncode
            how = (
                f"was killed by {signal.Signals(-code).name}"
                if code < 0
                else f"exited with status {code}"
            )
            if self._died is None:  # first seen now: the log says so from here on
                self._died = (
                    f"{self.process.what} (pid {proc.pid}) {how}, "
                    f"{time.monotonic() - self._started_at:.1f} s after it started"
                )
                self.note(self._died)
            return LaunchError(
                self._died,
                log=self.log_path,
                hint="read the target's log; the run's other cases go on with a new target",
            )
        if self._rpc_socket is not None and self.rpc is not None and not self._rpc_socket.exists():
            return LaunchError(
                f"the SPDK target's RPC socket {self._rpc_socket} is gone",
                hint="did the SPDK target exit? read its log",
            )
        return None

    def note(self, text: str) -> None:
        """A line of vmlab's own in the target's log, so the log tells the whole story."""
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as fh:
            fh.write(f"vmlab: {text}\n")

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        try:
            for disk in reversed(list(self.disks)):
                self.remove_disk(disk)
        finally:
            try:
                if self.process is not None:
                    self.failure()  # a target that died says so in its log
                    self.process.stop()
                    proc = self.process.proc
                    self.note(f"stopped (status {proc.returncode if proc else None})")
            finally:
                if self.rpc is not None:
                    self.rpc.close()
                    self.rpc = None
                try:
                    self._host.close()  # the hugetlbfs mount: pages a killed target held
                finally:
                    if self._private_dir is not None:
                        shutil.rmtree(self._private_dir, ignore_errors=True)
