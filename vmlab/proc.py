"""Running other programs: one wrapper for short commands, one deadline, one managed process.

Every external command vmlab runs goes through :func:`run` (argv list, never a shell, always a
timeout, output captured, a clear error naming the command) or, for a process that lives while
vmlab works (QEMU, qemu-storage-daemon, SPDK, iperf3, ceph-osd --mkfs), :class:`ManagedProcess`:
its own session, killed with vmlab (PR_SET_PDEATHSIG), stopped with a signal then SIGKILL.
A process that is not our child (a Ceph daemon: it forks away, outlives vmlab and is found by
its pidfile) is judged by :func:`alive` -- its /proc state and, against a reused pid, its
command line -- and stopped with :func:`stop_pid`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from vmlab.errors import CommandError, HostError, LaunchError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end (whatever its exit status)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout_s: float,
    what: str | None = None,
    check: bool = True,
    input_bytes: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    hint: str | None = None,
    missing_hint: str | None = None,
    timeout_hint: str | None = None,
    output: Path | None = None,
) -> Completed:
    """Run a command to its end, output captured, stdin closed unless ``input_bytes``.

    Raises HostError when the program is not installed (``missing_hint`` says how to get it),
    CommandError when it outlives ``timeout_s`` (``timeout_hint``, else ``hint``, says what to
    do) or, with ``check``, exits non-zero (``hint``). ``what`` names the command in messages
    (default: the program).

    With ``output``, stdout and stderr are appended to that file instead of captured (the
    Completed holds no output; errors name the file as their log): for a program that
    daemonizes, since its daemon keeps the descriptors open and a pipe would not end before
    the daemon does."""
    args = tuple(str(a) for a in argv)
    name = what or Path(args[0]).name
    log.debug("run: %s", " ".join(args))
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(output.open("ab")) if output is not None else None
        try:
            done = subprocess.run(
                args,
                input=input_bytes,
                stdin=None if input_bytes is not None else subprocess.DEVNULL,
                stdout=sink if sink is not None else subprocess.PIPE,
                stderr=subprocess.STDOUT if sink is not None else subprocess.PIPE,
                timeout=timeout_s,
                env=None if env is None else dict(env),
                cwd=cwd,
                check=False,
            )
        except FileNotFoundError as exc:
            raise HostError(f"{args[0]} is not installed", hint=missing_hint) from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"{name} did not finish within {timeout_s:g} s",
                argv=args,
                returncode=None,
                output=_text(exc.stdout) + _text(exc.stderr),
                log=output,
                hint=timeout_hint or hint,
            ) from exc
    completed = Completed(args, done.returncode, done.stdout or b"", done.stderr or b"")
    if check and not completed.ok:
        raise CommandError(
            f"{name} failed",
            argv=args,
            returncode=done.returncode,
            output=completed.out + completed.err,
            log=output,
            hint=hint,
        )
    return completed


class Deadline:
    """A point in time a wait must not pass; ``timeout_s`` is what it was given."""

    def __init__(self, timeout_s: float, what: str = "") -> None:
        self.timeout_s = timeout_s
        self.what = what
        self.end = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def proc_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (R, S, D, Z, ...); None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]  # the name in (...) may hold spaces and ")"


def cmdline(pid: int) -> list[str]:
    """The arguments a process was started with; [] when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(pid: int, *, arg: str | None = None) -> bool:
    """True while the process exists and is not a zombie (PID 1 here may never reap it).

    With ``arg``, only while ``arg`` is one of its command-line arguments too: a pid read from
    a pidfile, or remembered, may by now belong to another program."""
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return arg is None or arg in cmdline(pid)


def pids_with_arg(arg: str) -> list[int]:
    """Live processes (not zombies) with ``arg`` among their command-line arguments."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return sorted(pid for pid in pids if alive(pid, arg=arg))


def signal_and_wait(
    pid: int, sig: signal.Signals, timeout_s: float, *, arg: str | None = None
) -> bool:
    """Send ``sig`` to a process that need not be our child; True once it is gone (a zombie
    counts as gone). ``arg`` as in :func:`alive`: a process without it is not the one meant."""
    if not alive(pid, arg=arg):
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = Deadline(timeout_s)
    while alive(pid, arg=arg):
        if deadline.expired():
            return False
        time.sleep(0.05)
    return True


def stop_pid(
    pid: int,
    *,
    first: signal.Signals = signal.SIGTERM,
    grace_s: float = 10.0,
    what: str = "",
    arg: str | None = None,
) -> bool:
    """``first``, then SIGKILL after ``grace_s``; True once the process is gone. ``arg`` as in
    :func:`alive`."""
    if signal_and_wait(pid, first, grace_s, arg=arg):
        return True
    log.warning("%s (pid %d) ignored %s: SIGKILL", what or "process", pid, first.name)
    return signal_and_wait(pid, signal.SIGKILL, 10.0, arg=arg)


def stop_child(
    proc: subprocess.Popen[bytes],
    *,
    first: signal.Signals = signal.SIGTERM,
    grace_s: float = 3.0,
    what: str = "",
) -> int | None:
    """Stop a child of ours: ``first``, then SIGKILL after ``grace_s``; its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(first)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored %s: SIGKILL", what or "process", proc.pid, first.name)
        proc.kill()
        try:
            return proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) survived SIGKILL", what or "process", proc.pid)
            return None


class ManagedProcess:
    """A long-running child: started on enter, stopped on exit, on every path.

    It runs in its own session (Ctrl-C reaches vmlab, which stops it in order, not the child
    behind vmlab's back) and dies with vmlab (PR_SET_PDEATHSIG). Output goes to ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        what: str,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        stop_signal: signal.Signals = signal.SIGTERM,
        grace_s: float = 3.0,
        missing_hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.what = what
        self.env = env
        self.pass_fds = tuple(pass_fds)
        self.stop_signal = stop_signal
        self.grace_s = grace_s
        self.missing_hint = missing_hint
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.debug("starting %s: %s", self.what, " ".join(self.argv))
        with self.log_path.open("ab") as out:
            self.started_at = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=None if self.env is None else dict(self.env),
                    start_new_session=True,
                    pass_fds=self.pass_fds,
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
                )
            except OSError as exc:
                raise LaunchError(
                    f"cannot run {self.argv[0]}: {exc.strerror}", hint=self.missing_hint
                ) from exc

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "; ".join(text.strip().splitlines()[-lines:])

    def check_running(self, when: str) -> None:
        """Raise LaunchError (with the log's last lines) if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise LaunchError(
                f"{self.what} exited with status {self.proc.returncode} {when}: "
                f"{self.log_tail() or 'no output'}",
                log=self.log_path,
            )

    def wait(self, timeout_s: float) -> int | None:
        """The exit status once it exits within ``timeout_s``, else None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, first=self.stop_signal, grace_s=self.grace_s, what=self.what)
