"""One exception root for everything vmlab reports to a user.

Each subclass carries the data a person needs to act on the failure (the command, its exit
code, the log to read) and a ``hint``: what to do about it. Only the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class VmlabError(Exception):
    """Root of vmlab's errors: a message, and a hint for the user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(VmlabError):
    """A spec file that does not validate: names the file and every field path at fault."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | None = None,
        problems: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.file = file
        self.problems = list(problems)

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        return "\n".join(lines)


class UsageError(VmlabError):
    """Bad command-line arguments that the argument parser cannot see: an unknown case id, a
    path that is not there (exit code 2, like a bad spec)."""


class HostError(VmlabError):
    """The host lacks something the request needs (a binary, a module, a device, hugepages)."""


class CommandError(VmlabError):
    """An external command failed; keeps its argv, exit code and the tail of its output."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str],
        returncode: int | None,
        output: str = "",
        log: Path | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        self.log = log

    def __str__(self) -> str:
        text = f"{self.message} (exit {self.returncode}): {' '.join(self.argv)}"
        if self.output.strip():
            tail = "\n".join(self.output.strip().splitlines()[-15:])
            text += f"\n{tail}"
        if self.log is not None:
            text += f"\nlog: {self.log}"
        return text


class LaunchError(VmlabError):
    """A guest or sidecar did not start, or did not become ready in time."""

    def __init__(self, message: str, *, log: Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.log = log

    def __str__(self) -> str:
        return self.message if self.log is None else f"{self.message}\nlog: {self.log}"


class AccelError(LaunchError):
    """The accelerator failed under a running guest: QEMU under KVM aborted, stopped with a KVM
    internal error, or the guest printed nothing at all. ``detail`` is QEMU's own line."""

    def __init__(self, message: str, *, accel: str, detail: str, log: Path | None = None) -> None:
        super().__init__(
            message,
            log=log,
            hint="this /dev/kvm cannot run vmlab's guests: leave the accelerator to vmlab "
            "(no --accel, accel: auto) and it runs them under TCG",
        )
        self.accel = accel
        self.detail = detail


class GuestError(VmlabError):
    """Something inside a running guest failed (SSH, a command, a missing disk).

    A command that failed or ran past its deadline keeps what it printed so far: ``stdout`` and
    ``stderr`` as bytes (save them before reading anything into them), its ``command``, its
    ``exit_code`` (None if it never exited) and ``timed_out``.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        command: str | None = None,
        exit_code: int | None = None,
        stdout: bytes = b"",
        stderr: bytes = b"",
        timed_out: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out


class ResultError(VmlabError):
    """Output that cannot be parsed or stored (fio JSON, a run directory, the index)."""

    def __init__(self, message: str, *, path: Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path

    def __str__(self) -> str:
        return self.message if self.path is None else f"{self.path}: {self.message}"
